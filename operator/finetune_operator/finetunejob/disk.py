"""A training pod the kubelet evicted for writing more local disk than its own limit, told apart from an
eviction because its node ran low on disk, and reported with the numbers the user needs. Pure.

Why: the kubelet's evictions carry the DisruptionTarget condition, which the Job's podFailurePolicy ignores (a
disruption is a free retry, builders/training.py). That is right when the node ran short because of other pods,
but a pod that exceeded its own `ephemeral-storage` limit (builders.training.ephemeral_storage) would do it
again on every replacement, forever, since an ignored failure never counts towards the backoff limit. So the
operator fails such a run at the first eviction for its own limit, `DiskLimitExceeded`, with the disk plan
(`status.validation.diskPlan`) and the fix, and deletes the run's Job so that no replacement starts; a change of
`resources` (a larger `ephemeralStorage`) runs it again from its last checkpoint, as after an out-of-memory kill.
An eviction for the node's disk pressure stays a free retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_operator.core.observed import PodObs

DISK_LIMIT_EXCEEDED = "DiskLimitExceeded"

OWN_LIMIT_MARKERS = (
    "exceeds the total limit of containers",  # the pod's ephemeral-storage limits, summed
    "exceeded its local ephemeral storage limit",  # one container's limit
    "Usage of EmptyDir volume",  # an emptyDir's sizeLimit
)
"""How the kubelet words an eviction for a pod's own limits (pkg/kubelet/eviction: localStorageEviction)."""

GIB = 1024**3


def own_limit_eviction(pods: Sequence[PodObs]) -> PodObs | None:
    """The newest pod of `pods` the kubelet evicted for exceeding its own local-disk limit, if any."""
    evicted = [p for p in pods if p.eviction and any(m in p.eviction for m in OWN_LIMIT_MARKERS)]
    evicted.sort(key=lambda p: p.created)
    return evicted[-1] if evicted else None


def _gib(value: Any) -> str:
    return f"{value / GIB:.1f} GiB" if isinstance(value, int) and not isinstance(value, bool) else "?"


def disk_limit_message(pod: PodObs, limit: str | None, disk_plan: dict[str, Any] | None) -> str:
    """What happened, what was planned, and the change that runs it again."""
    plan = disk_plan if isinstance(disk_plan, dict) else {}
    planned = (
        f"the data check planned {_gib(plan.get('totalBytes'))} (model {_gib(plan.get('modelBytes'))}, data "
        f"{_gib(plan.get('dataBytes'))}, {plan.get('checkpointsAtOnce', '?')} checkpoints of "
        f"{_gib(plan.get('checkpointBytes'))}, output {_gib(plan.get('outputBytes'))}, with margin)"
        if plan
        else "there is no disk plan (no data check)"
    )
    return (
        f"training pod {pod.name} was evicted for writing more local disk than its limit "
        f"(ephemeral-storage {limit or '?'}): {pod.eviction.strip()} The run is not retried with the same limit: "
        f"{planned}. Set resources.ephemeralStorage higher (for example twice the limit); the run then resumes "
        "from its last checkpoint"
    )
