"""The operator's memory of what it watches: FineTuneJob bodies and compact observations of their children.

Why: a reconcile that reads its inputs from memory costs the API server nothing; only changes go out.
Watch events (from kopf) fill it; reconcile threads read it, so every access takes one lock.

Ownership (api.ownership): a Job or Deployment is filed under (its namespace, its controller FineTuneJob's
uid) and a pod under (its namespace, its controller Job's uid), as the observations read them from the
ownerReferences; a data-check pod the operator made itself (no Job) is filed under its controller FineTuneJob's
uid. Labels only choose what the watches stream. A view of a FineTuneJob holds the children filed under its own
namespace and uid, and only the pods of the Jobs among them or its own: a Job in another namespace, or one
that merely carries the job-uid label, is never part of it, and the uid also tells apart a deleted and
re-created job of the same name. Entries go when their owner goes (`forget_body`), and `prune` drops what
names no live owner (a forged uid, a child whose event came after its owner's deletion), so memory is bounded
by the live FineTuneJobs and their children.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from finetune_operator.core.observed import DeploymentObs, JobObs, PodObs

Key = tuple[str, str]  # (namespace, name)
OwnerKey = tuple[str, str]  # (namespace, uid): where a child is filed


@dataclass
class _Children:
    jobs: dict[str, JobObs] = field(default_factory=dict)
    deployment: DeploymentObs | None = None


@dataclass(frozen=True)
class View:
    """A consistent copy of one FineTuneJob and its children, for one reconcile."""

    body: dict[str, Any]
    jobs: tuple[JobObs, ...]
    pods: tuple[PodObs, ...]
    deployment: DeploymentObs | None
    progress: dict[str, Any] | None = None  # the trainer's validated report (finetunejob/progress.py), if any


UNREAD_METADATA = ("managedFields",)
UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _pod_group(pod: PodObs) -> str:
    """The uid a pod is filed under: its controller Job's, else its controller FineTuneJob's ("" : neither)."""
    return pod.job_uid or pod.owner_uid


def held_copy(body: dict[str, Any]) -> dict[str, Any]:
    """The copy of a watched body the operator keeps: everything but what no reconcile reads.

    Why: at 10,000 FineTuneJobs the bodies were the largest share of the operator's memory (21.9 KB each of
    654 MiB), and of each body the server-side apply bookkeeping (`metadata.managedFields`: without it 6.9 KB,
    docs/benchmarks.md) and `kubectl apply`'s copy of the whole spec in an annotation are read by nobody here.
    Status patches are merge patches and no body is written back whole, so the fields are not lost, only not
    held."""
    meta = dict(body.get("metadata") or {})
    for name in UNREAD_METADATA:
        meta.pop(name, None)
    annotations = meta.get("annotations")
    if isinstance(annotations, dict) and any(a in annotations for a in UNREAD_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in UNREAD_ANNOTATIONS}
    return copy.deepcopy({**body, "metadata": meta})


def _newer_or_equal(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether `new` is at least as recent as `old`, by resourceVersion when both are numbers (etcd's are)."""
    if old is None:
        return True
    try:
        return int(new["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[Key, dict[str, Any]] = {}
        self._uids: dict[str, Key] = {}
        self._children: dict[OwnerKey, _Children] = {}  # by (namespace, FineTuneJob uid)
        # by (namespace, Job uid); a bare data-check pod by (namespace, its FineTuneJob's uid)
        self._pods: dict[OwnerKey, dict[str, PodObs]] = {}
        # (namespace, Job uid) -> its owner's uid: a pod's event finds its FineTuneJob in one lookup; a scan of
        # every owner's Jobs under the lock cost O(jobs) per pod event, O(jobs^2) for a burst of them
        self._job_owners: dict[OwnerKey, str] = {}
        # (namespace, FineTuneJob uid) -> the trainer's validated progress report, from the watched ConfigMap
        self._progress: dict[OwnerKey, dict[str, Any]] = {}
        self._orphans: set[tuple[str, OwnerKey]] = set()  # what the last prune found owner-less
        self._servers: dict[Key, dict[str, Any]] = {}  # ModelServer bodies (shared serving)

    def put_body(self, body: dict[str, Any]) -> Key:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if _newer_or_equal(body, self._bodies.get(key)):
                self._bodies[key] = held_copy(body)
                self._uids[meta["uid"]] = key
        return key

    def holds(self, body: dict[str, Any]) -> bool:
        """Whether this very version of the body (its resourceVersion) is already held: the watch event of a
        status the operator itself wrote, filed from the write's answer by the pass that made it."""
        meta = body["metadata"]
        with self._lock:
            held = self._bodies.get((meta["namespace"], meta["name"]))
            version = str(meta.get("resourceVersion") or "")
            return held is not None and bool(version) and str(held["metadata"].get("resourceVersion")) == version

    def forget_body(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            self._bodies.pop((namespace, name), None)
            self._uids.pop(uid, None)
            kids = self._children.pop((namespace, uid), None)
            self._progress.pop((namespace, uid), None)
            for job in kids.jobs.values() if kids else ():
                self._pods.pop((namespace, job.uid), None)
                self._job_owners.pop((namespace, job.uid), None)
            self._pods.pop((namespace, uid), None)

    def key_of(self, uid: str) -> Key | None:
        with self._lock:
            return self._uids.get(uid)

    def owner_key(self, namespace: str, uid: str) -> Key | None:
        """The FineTuneJob with this uid, if it lives in `namespace` (a child's event queues only its own owner)."""
        with self._lock:
            key = self._uids.get(uid)
            return key if key is not None and key[0] == namespace else None

    def owner_of_pod(self, pod: PodObs) -> Key | None:
        """The FineTuneJob whose filed Job controls this pod, or which controls it itself, if any."""
        with self._lock:
            owner = self._job_owners.get((pod.namespace, pod.job_uid)) if pod.job_uid else pod.owner_uid or None
            key = self._uids.get(owner) if owner is not None else None
            return key if key is not None and key[0] == pod.namespace else None

    def all_keys(self) -> list[Key]:
        with self._lock:
            return list(self._bodies)

    def put_job(self, job: JobObs, *, only_if_absent: bool = False) -> None:
        """File a Job under its controller FineTuneJob; one without such a controller is not anyone's child."""
        if not job.owner_uid:
            return
        with self._lock:
            jobs = self._children.setdefault((job.namespace, job.owner_uid), _Children()).jobs
            if not (only_if_absent and job.name in jobs):
                previous = jobs.get(job.name)
                if previous is not None and previous.uid != job.uid:  # the name now holds a new Job
                    self._job_owners.pop((job.namespace, previous.uid), None)
                jobs[job.name] = job
                if job.uid:
                    self._job_owners[(job.namespace, job.uid)] = job.owner_uid

    def mark_job_deleting(self, namespace: str, owner_uid: str, name: str) -> None:
        """A foreground deletion was requested: the Job lingers until its pods are gone, and no pass may
        create its successor (same name) before the watch reports it deleted."""
        with self._lock:
            kids = self._children.get((namespace, owner_uid))
            if kids is not None and name in kids.jobs:
                kids.jobs[name] = replace(kids.jobs[name], deleting=True)

    def forget_job(self, namespace: str, owner_uid: str, name: str) -> None:
        with self._lock:
            kids = self._children.get((namespace, owner_uid))
            if kids is None:
                return
            gone = kids.jobs.pop(name, None)
            if gone is not None and gone.uid:
                self._pods.pop((namespace, gone.uid), None)
                self._job_owners.pop((namespace, gone.uid), None)
            if not kids.jobs and kids.deployment is None:
                self._children.pop((namespace, owner_uid), None)

    def put_pod(self, pod: PodObs) -> None:
        """File a pod under its controller Job, or its controller FineTuneJob (a bare data-check pod); whether
        that Job counts is decided when a view is read."""
        filed_under = _pod_group(pod)
        if not filed_under:
            return
        with self._lock:
            self._pods.setdefault((pod.namespace, filed_under), {})[pod.name] = pod

    def forget_pod(self, pod: PodObs) -> None:
        with self._lock:
            group = (pod.namespace, _pod_group(pod))
            pods = self._pods.get(group)
            if pods is None:
                return
            pods.pop(pod.name, None)
            if not pods:
                self._pods.pop(group, None)

    def put_progress(self, namespace: str, owner_uid: str, report: dict[str, Any] | None) -> bool:
        """File the trainer's validated report for its FineTuneJob (None: none, or none that passed the checks);
        whether it changed what is held (an unchanged report queues no pass)."""
        with self._lock:
            key = (namespace, owner_uid)
            if report is None:
                return self._progress.pop(key, None) is not None
            if self._progress.get(key) == report:
                return False
            self._progress[key] = copy.deepcopy(report)
            return True

    def put_deployment(self, deployment: DeploymentObs) -> None:
        if not deployment.owner_uid:
            return
        with self._lock:
            self._children.setdefault((deployment.namespace, deployment.owner_uid), _Children()).deployment = deployment

    def forget_deployment(self, namespace: str, owner_uid: str, uid: str = "") -> None:
        """The owner's Deployment is gone (only the one with `uid`, when given: a watch event names which)."""
        with self._lock:
            kids = self._children.get((namespace, owner_uid))
            if kids is None or (uid and kids.deployment is not None and kids.deployment.uid != uid):
                return
            kids.deployment = None
            if not kids.jobs:
                self._children.pop((namespace, owner_uid), None)

    def prune(self) -> int:
        """Drop the children that name no live owner: groups filed under a (namespace, uid) no FineTuneJob in
        memory has, and pods of Jobs no group holds. A group is dropped at the second prune that finds it
        owner-less (one resync period of grace: a child's event may come before its owner's). How many went.
        Pods count as owner-less when neither a Job of a live owner nor a live owner itself controls them."""
        with self._lock:
            live = {(key[0], uid) for uid, key in self._uids.items()}
            jobs = {(k[0], j.uid) for k, kids in self._children.items() if k in live for j in kids.jobs.values()}
            jobs |= live
            found = {("children", k) for k in self._children if k not in live}
            found |= {("pods", k) for k in self._pods if k not in jobs}
            found |= {("progress", k) for k in self._progress if k not in live}
            drop, self._orphans = found & self._orphans, found - self._orphans
            for kind, key in drop:
                if kind == "children":
                    dropped = self._children.pop(key, None)
                    for job in dropped.jobs.values() if dropped is not None else ():
                        self._job_owners.pop((key[0], job.uid), None)
                elif kind == "progress":
                    self._progress.pop(key, None)
                else:
                    self._pods.pop(key, None)
            return len(drop)

    def sizes(self) -> tuple[int, int]:
        """How many child groups and pod groups are held (for tests of the bound)."""
        with self._lock:
            return len(self._children), len(self._pods)

    def job_owner_entries(self) -> int:
        """How many Job -> owner index entries are held (for tests of the bound: none outlives its Job)."""
        with self._lock:
            return len(self._job_owners)

    def progress_entries(self) -> int:
        """How many progress reports are held (for tests of the bound: none outlives its FineTuneJob)."""
        with self._lock:
            return len(self._progress)

    def put_server(self, body: dict[str, Any]) -> Key:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if _newer_or_equal(body, self._servers.get(key)):
                self._servers[key] = held_copy(body)
        return key

    def forget_server(self, namespace: str, name: str) -> None:
        with self._lock:
            self._servers.pop((namespace, name), None)

    def server(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            body = self._servers.get(key)
            return copy.deepcopy(body) if body is not None else None

    def server_keys(self) -> list[Key]:
        with self._lock:
            return list(self._servers)

    def bodies_naming(self, server: Key, refer: Callable[[dict[str, Any]], Key | None]) -> list[dict[str, Any]]:
        """The FineTuneJob bodies whose serving.server names `server` (`refer` reads a body's reference)."""
        with self._lock:
            return [copy.deepcopy(b) for b in self._bodies.values() if refer(b) == server]

    def view(self, key: Key) -> View | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is None:
                return None
            kids = self._children.get((key[0], body["metadata"]["uid"]), _Children())
            pods = [p for j in kids.jobs.values() if j.uid for p in self._pods.get((key[0], j.uid), {}).values()]
            own = self._pods.get((key[0], body["metadata"]["uid"]), {})  # bare data-check pods
            pods += [p for p in own.values() if p.owner_uid == body["metadata"]["uid"] and not p.job_uid]
            progress = self._progress.get((key[0], body["metadata"]["uid"]))
            return View(
                copy.deepcopy(body),
                tuple(kids.jobs.values()),
                tuple(pods),
                kids.deployment,
                copy.deepcopy(progress) if progress is not None else None,
            )
