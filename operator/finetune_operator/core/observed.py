"""Compact, typed observations of the children (Job, pods, Deployment) made from their raw bodies.

Why: the operator keeps what it watches in memory; keeping a few fields per object instead of whole bodies
keeps the footprint small at hundreds of jobs, and the status function takes these typed values, so tests
write a pod's state in one line. Pure: dicts in, frozen dataclasses out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from finetune_operator import KIND
from finetune_operator.api.labels import (
    ANNOTATION_PLACEMENT_HASH,
    ANNOTATION_SPEC_HASH,
    ANNOTATION_TRAINING_HASH,
    COMPONENT_TRAINER,
    LABEL_COMPONENT,
    LABEL_RUN,
    TRAINER_CONTAINER,
)
from finetune_operator.api.ownership import controller_uid

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _conditions(body: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        c.get("type", ""): {k: str(c.get(k) or "") for k in ("status", "reason", "message")}
        for c in body.get("status", {}).get("conditions") or []
    }


def _run(meta: dict[str, Any]) -> int:
    try:
        return int((meta.get("labels") or {}).get(LABEL_RUN, "0"))
    except ValueError:
        return 0


def _component(meta: dict[str, Any]) -> str:
    return str((meta.get("labels") or {}).get(LABEL_COMPONENT, COMPONENT_TRAINER))


@dataclass(frozen=True)
class JobObs:
    name: str
    run: int
    component: str = COMPONENT_TRAINER  # or COMPONENT_VALIDATOR: the run's data check
    owner_uid: str = ""  # its controller FineTuneJob's uid (api.ownership; never the label)
    namespace: str = ""
    uid: str = ""  # the Job's own: its pods name it as their controller
    training_hash: str = ""
    placement_hash: str = ""  # the Job's placement-hash annotation (every Job the operator makes has one)
    suspended: bool = False
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_condition: bool = False
    failure_reason: str = ""
    failure_message: str = ""
    deleting: bool = False

    @property
    def finished(self) -> bool:
        return self.complete or self.failed_condition


def job_obs(body: dict[str, Any]) -> JobObs:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    conditions = _conditions(body)
    failed = conditions.get("Failed", {})
    target = conditions.get("FailureTarget", {})
    failed_now = failed.get("status") == "True" or target.get("status") == "True"
    reason_source = failed if failed.get("status") == "True" else target
    return JobObs(
        name=meta.get("name", ""),
        run=_run(meta),
        component=_component(meta),
        owner_uid=controller_uid(body, KIND),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        training_hash=(meta.get("annotations") or {}).get(ANNOTATION_TRAINING_HASH, ""),
        placement_hash=(meta.get("annotations") or {}).get(ANNOTATION_PLACEMENT_HASH, ""),
        suspended=bool(spec.get("suspend")),
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        complete=conditions.get("Complete", {}).get("status") == "True",
        failed_condition=failed_now,
        failure_reason=reason_source.get("reason", "") if failed_now else "",
        failure_message=reason_source.get("message", "") if failed_now else "",
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class PodObs:
    name: str
    run: int
    phase: str = "Pending"
    component: str = COMPONENT_TRAINER
    index: int = 0
    created: str = ""
    unschedulable: str = ""  # the scheduler's message while the pod cannot be placed
    waiting_reason: str = ""  # e.g. CreateContainerConfigError, ImagePullBackOff
    waiting_message: str = ""
    exit_code: int | None = None
    termination_message: str = ""
    termination_reason: str = ""  # the kubelet's: Completed, Error, OOMKilled
    disrupted: bool = False
    deleting: bool = False
    node_lost: str = ""  # its node, when Kubernetes evicted it because that node stopped responding
    eviction: str = ""  # the kubelet's message when it evicted the pod (status.reason Evicted)
    node: str = ""  # spec.nodeName: where it was placed ("" until scheduled)
    job_uid: str = ""  # its controller Job's uid: the pod counts only through a Job that counts
    namespace: str = ""
    # its controller FineTuneJob's uid: a data-check pod the operator made itself (builders.training.validation_pod)
    owner_uid: str = ""
    placement_hash: str = ""  # a bare pod's placement-hash annotation (a Job's pods: the Job carries it)
    reason: str = ""  # status.reason: Evicted, DeadlineExceeded (its activeDeadlineSeconds passed)
    uid: str = ""


def _node_lost(body: dict[str, Any], conditions: dict[str, dict[str, str]]) -> str:
    """The pod's node when the taint manager evicted the pod for the node's NoExecute taint (unreachable,
    not-ready: its kubelet stopped reporting). Such a pod stays Terminating until the node answers again, and the
    Job (podFailurePolicy: replacement only once a pod is terminal) starts no replacement meanwhile."""
    disruption = conditions.get("DisruptionTarget", {})
    if disruption.get("status") == "True" and disruption.get("reason") == "DeletionByTaintManager":
        return str((body.get("spec") or {}).get("nodeName") or "")
    return ""


def pod_obs(body: dict[str, Any]) -> PodObs:
    meta, status = body.get("metadata", {}), body.get("status", {})
    conditions = _conditions(body)
    scheduled = conditions.get("PodScheduled", {})
    statuses: list[dict[str, Any]] = status.get("containerStatuses") or []
    trainer: dict[str, Any] = next((c for c in statuses if c.get("name") == TRAINER_CONTAINER), {})
    state = trainer.get("state") or {}
    terminated, waiting = state.get("terminated") or {}, state.get("waiting") or {}
    try:
        index = int((meta.get("annotations") or {}).get(INDEX_ANNOTATION, "0"))
    except ValueError:
        index = 0
    return PodObs(
        name=meta.get("name", ""),
        run=_run(meta),
        phase=status.get("phase") or "Pending",
        component=_component(meta),
        index=index,
        created=meta.get("creationTimestamp") or "",
        unschedulable=scheduled.get("message", "") if scheduled.get("status") == "False" else "",
        waiting_reason=waiting.get("reason", ""),
        waiting_message=waiting.get("message", ""),
        exit_code=terminated.get("exitCode") if terminated else None,
        termination_message=terminated.get("message", "") if terminated else "",
        termination_reason=terminated.get("reason", "") if terminated else "",
        disrupted=conditions.get("DisruptionTarget", {}).get("status") == "True",
        deleting=bool(meta.get("deletionTimestamp")),
        node_lost=_node_lost(body, conditions),
        eviction=str(status.get("message") or "Evicted") if status.get("reason") == "Evicted" else "",
        node=str((body.get("spec") or {}).get("nodeName") or ""),
        job_uid=controller_uid(body, "Job", "batch"),
        namespace=meta.get("namespace", ""),
        owner_uid=controller_uid(body, KIND),
        placement_hash=(meta.get("annotations") or {}).get(ANNOTATION_PLACEMENT_HASH, ""),
        reason=str(status.get("reason") or ""),
        uid=str(meta.get("uid") or ""),
    )


@dataclass(frozen=True)
class DeploymentObs:
    name: str
    run: int
    spec_hash: str = ""
    replicas: int = 0
    updated: int = 0
    available: int = 0
    ready: int = 0
    current: bool = False  # the controller has seen the latest spec and finished rolling it out
    available_condition: bool = False
    owner_uid: str = ""  # its controller FineTuneJob's uid
    namespace: str = ""
    uid: str = ""


def deployment_obs(body: dict[str, Any]) -> DeploymentObs:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    replicas = int(spec.get("replicas") or 0)
    updated, available = int(status.get("updatedReplicas") or 0), int(status.get("availableReplicas") or 0)
    seen = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    total = int(status.get("replicas") or 0)
    return DeploymentObs(
        name=meta.get("name", ""),
        run=_run(meta),
        spec_hash=(meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH, ""),
        replicas=replicas,
        updated=updated,
        available=available,
        ready=int(status.get("readyReplicas") or 0),
        current=seen and updated == replicas and total == replicas and available >= replicas,
        available_condition=_conditions(body).get("Available", {}).get("status") == "True",
        owner_uid=controller_uid(body, KIND),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
    )


@dataclass(frozen=True)
class TrainerReport:
    """The trainer's termination message: {code, message, run?, metrics?, summary?, tracking?} (summary:
    `validate`'s; tracking: the MLflow run and whether tracking degraded)."""

    code: str
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)


def parse_termination_message(text: str) -> TrainerReport | None:
    """The last JSON line of the message; anything else (e.g. a log tail) becomes InternalError."""
    text = text.strip()
    if not text:
        return None
    for line in reversed(text.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "code" in data:
            metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
            summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
            tracking = data.get("tracking") if isinstance(data.get("tracking"), dict) else {}
            code, message = str(data["code"]), str(data.get("message", ""))
            return TrainerReport(code, message, metrics or {}, summary or {}, tracking or {})
    return TrainerReport("InternalError", text[-1024:])
