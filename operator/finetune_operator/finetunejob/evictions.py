"""A run's pods evicted by the kubelet because their node ran low (disk, memory), counted and bounded. Pure.

Why: the kubelet's evictions carry the DisruptionTarget condition, which the Job's podFailurePolicy ignores (a
disruption is a free retry, builders/training.py), so the Job replaces an evicted pod without counting it against
the backoff limit. That is right once: the node ran short because of its other pods, and the replacement may land
elsewhere. But a run whose pods keep being evicted (one node that keeps filling its disk, a dataset that fills any
node's) would be replaced forever, and the user would only see it go back to Pending. So each node-pressure
eviction of the run's current Job is counted in `status.evictions` (how many, the nodes, each pod, the last
kubelet message), announced by a Warning Event `NodePressureEviction` and the operator metric
`finetune_operator_node_pressure_evictions_total{resource}`, and at `settings.node_pressure_evictions` of them the
run fails `EvictedRepeatedly`, naming the nodes, and its Job is deleted so that no replacement starts. The count
belongs to the Job: a retry (the finetune.dev/retry annotation) or a changed placement makes a new Job and starts
it again at zero. An eviction for the pod's own disk limit is not this: disk.py fails the run at the first one.

The count is level-triggered: what the status recorded for this Job plus the evicted pods not recorded yet (the
pods stay, Failed, while their Job exists), so a restarted operator neither loses nor double-counts one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.core.observed import JobObs, PodObs
from finetune_operator.finetunejob.disk import OWN_LIMIT_MARKERS

EVICTED_REPEATEDLY = "EvictedRepeatedly"
EVENT_REASON = "NodePressureEviction"
NODE_PRESSURE = "The node was low on resource:"  # the kubelet's words (pkg/kubelet/eviction: nodeLowMessageFmt)
_RESOURCE = re.compile(r"The node was low on resource: ([a-z-]+)")
# what the kubelet evicts for (its signals' resources); anything else reads "unknown", so a pod status written by
# someone else cannot grow the metric's label values
RESOURCES = ("ephemeral-storage", "memory", "pids")
MAX_LIMIT = 20  # the setting's largest value: the run fails by then, so status.evictions.pods stays this short
MESSAGE_CHARS = 512


def pressure_resource(message: str) -> str:
    """The resource the node ran low on (ephemeral-storage, memory, pids), or "unknown"."""
    found = _RESOURCE.search(message)
    return found.group(1) if found and found.group(1) in RESOURCES else "unknown"


def node_pressure_evicted(pods: Sequence[PodObs], job_uid: str) -> list[PodObs]:
    """The pods of Job `job_uid` the kubelet evicted because their node ran low, oldest first."""
    evicted = [
        p
        for p in pods
        if p.job_uid == job_uid
        and NODE_PRESSURE in p.eviction
        and not any(marker in p.eviction for marker in OWN_LIMIT_MARKERS)
    ]
    return sorted(evicted, key=lambda p: (p.created, p.name))


@dataclass(frozen=True)
class Evictions:
    """status.evictions for the current Job (None: none so far) and the pods counted for the first time."""

    record: dict[str, Any] | None
    new: tuple[PodObs, ...] = ()

    @property
    def count(self) -> int:
        return int(self.record["count"]) if self.record else 0


def _recorded(previous: Any, run: int, job_uid: str) -> tuple[int, list[dict[str, str]]]:
    """What an earlier pass counted for this run's Job `job_uid` (anything else, or malformed: nothing)."""
    if not isinstance(previous, dict) or previous.get("run") != run or previous.get("jobUid") != job_uid:
        return 0, []
    entries = [
        {k: str(e.get(k) or "") for k in ("pod", "node", "resource")}
        for e in previous.get("pods") or []
        if isinstance(e, dict)
    ]
    count = previous.get("count")
    return (count if isinstance(count, int) and count >= len(entries) else len(entries)), entries


def counted(run: int, job: JobObs, pods: Sequence[PodObs], previous: Any) -> Evictions:
    """The count for `job` after this pass: what status recorded, plus its evicted pods not recorded yet."""
    count, entries = _recorded(previous, run, job.uid)
    known = {e["pod"] for e in entries}
    new = tuple(p for p in node_pressure_evicted(pods, job.uid) if p.name not in known)
    if not count and not new:
        return Evictions(None)
    entries += [{"pod": p.name, "node": p.node, "resource": pressure_resource(p.eviction)} for p in new]
    last = previous.get("last") if not new and isinstance(previous, dict) else None
    if new:
        p = new[-1]
        last = {"pod": p.name, "node": p.node, "resource": pressure_resource(p.eviction)}
        last["message"] = p.eviction.strip()[:MESSAGE_CHARS]
    record = {
        "run": run,
        "jobUid": job.uid,
        "count": count + len(new),
        "nodes": sorted({e["node"] for e in entries if e["node"]}),
        "pods": entries[-MAX_LIMIT:],
        "last": last,
    }
    return Evictions(record, new)


def event_message(run: int, pod: PodObs, count: int, limit: int) -> str:
    """The Warning Event of one eviction: which pod, where, what the node ran low on, and how many are left."""
    where = f"node {pod.node}" if pod.node else "its node"
    return (
        f"run {run}: training pod {pod.name} was evicted by {where}, low on {pressure_resource(pod.eviction)} "
        f"({count} of {limit} node-pressure evictions before the run fails {EVICTED_REPEATEDLY}); the Job starts "
        "a replacement"
    )


def failure_message(run: int, evictions: Evictions, limit: int) -> str:
    """Why the run stopped, the nodes, and what to do."""
    record = evictions.record or {}
    resources = sorted({str(e.get("resource")) for e in record.get("pods") or []})
    nodes = ", ".join(record.get("nodes") or []) or "unknown nodes"
    last = (record.get("last") or {}).get("message") or ""
    return (
        f"run {run}: its training pods were evicted {evictions.count} times because their node ran low on "
        f"{', '.join(resources)} (nodes: {nodes}; the limit is {limit}, the operator's node_pressure_evictions). "
        f"Last: {last} The run is not replaced again: free the nodes' disk or memory (or give the run "
        "resources.ephemeralStorage so the scheduler places it where there is room), then retry it with the "
        "finetune.dev/retry annotation; it resumes from its last checkpoint"
    )
