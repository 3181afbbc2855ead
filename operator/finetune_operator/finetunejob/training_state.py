"""What a training run is doing, computed purely from the observed Job, its pods and the trainer's progress.

Why pure: this function decides what a user reads in `kubectl get ftj`; a table of (observed -> phase,
reason, error) cases tests it without a cluster. The planner adds the gate and serving on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from finetune_operator.api.labels import COMPONENT_VALIDATOR
from finetune_operator.core.observed import JobObs, PodObs, TrainerReport, parse_termination_message
from finetune_operator.finetunejob.oom import kill_error, killed_pod

IMAGE_PROBLEMS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_PROBLEMS = ("CreateContainerConfigError", "CreateContainerError")


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str

    def to_status(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class TrainingState:
    """Phase of the run's training part: Pending, Queued, Training, Evaluating, Suspended, Trained, Failed."""

    phase: str
    reason: str
    message: str
    error: ErrorInfo | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    tracking: dict[str, Any] = field(default_factory=dict)  # the termination message's, when the run ended


# A training Job with no pod yet, from the pass that creates it until its first pod is seen: one wording for both
# (plan.py reports it for the Job it has just made), so the Job's first observation writes no status.
WAITING_FOR_PODS = TrainingState("Queued", "WaitingForPods", "training Job created; waiting for its pods to start")


def _report_of(pods: Sequence[PodObs], *, succeeded: bool) -> TrainerReport | None:
    """The termination report of the newest finished pod (rank 0 first for a success)."""
    phase = "Succeeded" if succeeded else "Failed"
    done = [p for p in pods if p.phase == phase and p.termination_message]
    if succeeded:
        done = [p for p in done if p.index == 0] or done
        done.sort(key=lambda p: p.created)
    else:
        done.sort(key=lambda p: (p.exit_code == 42, p.created))
    return parse_termination_message(done[-1].termination_message) if done else None


def _trained(pods: Sequence[PodObs], attempts: int) -> TrainingState:
    report = _report_of(pods, succeeded=True)
    metrics = report.metrics if report else {}
    message = report.message if report and report.message else "training and evaluation finished"
    tracking = report.tracking if report else {}
    return TrainingState("Trained", "Trained", message, metrics=metrics, attempts=attempts, tracking=tracking)


def _failed(job: JobObs, pods: Sequence[PodObs], attempts: int) -> TrainingState:
    report = _report_of(pods, succeeded=False)
    killed = killed_pod(pods) if job.failure_reason == "PodFailurePolicy" else None
    if killed is not None:  # exit 137 fails the Job at once (oom.py): out of memory, or another SIGKILL
        error = ErrorInfo(*kill_error(killed, job.component))
    elif job.failure_reason == "PodFailurePolicy" and report and report.code not in ("Succeeded", "InternalError"):
        error = ErrorInfo(report.code, report.message)
    elif job.failure_reason == "DeadlineExceeded" and job.component != COMPONENT_VALIDATOR:
        # the training Job's activeDeadlineSeconds is only ever spec.resources.maxDuration (builders/training.py)
        error = ErrorInfo(
            "MaxDurationExceeded",
            f"training Job {job.name} ran longer than spec.resources.maxDuration and its pods were stopped; raise "
            "it (the Job is replaced and resumes from the last checkpoint) or annotate finetune.dev/retry",
        )
    elif job.failure_reason == "BackoffLimitExceeded":
        last = f"; last attempt: {report.code}: {report.message}" if report else ""
        error = ErrorInfo("BackoffLimitExceeded", f"{attempts} attempts failed{last}")
    else:
        detail = f"{report.code}: {report.message}" if report else job.failure_message or job.failure_reason
        noun = "validation" if job.component == COMPONENT_VALIDATOR else "training"
        error = ErrorInfo("JobFailed", f"{noun} Job {job.name} failed: {detail}")
    tracking = report.tracking if report else {}
    return TrainingState("Failed", error.code, error.message, error, attempts=attempts, tracking=tracking)


def node_lost_message(pod: PodObs) -> str:
    """Why nothing replaces a pod on a node that stopped responding, and what would free it. A data-check pod's
    next attempt is the operator's (finetunejob/validation_pod.py), a training pod's replacement the Job's."""
    if pod.component == COMPONENT_VALIDATOR:
        what, replacement = "validation pod", "the check's next attempt starts"
    else:
        what, replacement = "training pod", "the Job starts the replacement (which resumes from the last checkpoint)"
    return (
        f"{what} {pod.name} was evicted from node {pod.node_lost}, which stopped responding, and stays "
        f"terminating until it answers again: {replacement} "
        "once the node is back, deleted (as a cloud's node controller does when the machine is gone), "
        f"or tainted node.kubernetes.io/out-of-service=nodeshutdown:NoExecute (kubectl taint node {pod.node_lost} "
        "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute) by whoever knows the machine is down"
    )


def _running(job: JobObs, pods: Sequence[PodObs], progress: dict[str, Any], run: int, attempts: int) -> TrainingState:
    live = [p for p in pods if not p.deleting and p.phase in ("Pending", "Running")]
    if any(p.phase == "Running" for p in live) or (not live and job.ready > 0):
        stage = progress.get("stage") if progress.get("run") == run else None
        if stage == "evaluating":
            return TrainingState("Evaluating", "Evaluating", "evaluating on the held-out splits", attempts=attempts)
        if stage == "uploading":  # after evaluation: the phase must not fall back to Training
            return TrainingState(
                "Evaluating", "WritingArtifacts", "writing the model, metrics and report", attempts=attempts
            )
        # Not the step count: status.progress carries it, and a message that moved with every progress
        # report would make the operator write the status after each of the trainer's own writes.
        return TrainingState("Training", "Training", "training pods running", attempts=attempts)
    for pod in live:
        if pod.waiting_reason in CONFIG_PROBLEMS:
            return TrainingState(
                "Pending", pod.waiting_reason, pod.waiting_message or pod.waiting_reason, attempts=attempts
            )
        if pod.waiting_reason in IMAGE_PROBLEMS:
            return TrainingState(
                "Pending", "ImagePullBackOff", pod.waiting_message or pod.waiting_reason, attempts=attempts
            )
    lost = next((p for p in pods if p.node_lost and p.deleting and p.phase in ("Pending", "Running")), None)
    if lost is not None and not live:
        # Not a human's fault and not silent: say why nothing happens (tests/integration/test_chaos_node.py)
        return TrainingState("Queued", "NodeLost", node_lost_message(lost), attempts=attempts)
    unschedulable = next((p for p in live if p.unschedulable), None)
    if unschedulable:
        return TrainingState("Queued", "Unschedulable", unschedulable.unschedulable, attempts=attempts)
    if live:
        return TrainingState("Queued", "Starting", "training pods scheduled, starting", attempts=attempts)
    if job.failed > 0:
        return TrainingState(
            "Pending", "Retrying", f"attempt {job.failed} failed; another is starting", attempts=attempts
        )
    return replace(WAITING_FOR_PODS, attempts=attempts)


def training_state(
    job: JobObs | None,
    pods: Sequence[PodObs],
    *,
    suspend: bool,
    kueue: bool,
    progress: dict[str, Any],
    run: int,
    workers: int = 1,
) -> TrainingState:
    """Phase of run `run` from its Job (None: not created yet), the Job's pods and the trainer's progress.

    A run counts as trained as soon as a pod of every index has succeeded (the Job's own success rule),
    without waiting for the Job controller to mark the Job Complete: status follows the pods at once.
    """
    if job is None:
        if suspend:
            note = "; resume re-queues it" if kueue else ""
            return TrainingState("Suspended", "Suspended", f"suspended before the training Job started{note}")
        return TrainingState("Pending", "Creating", "creating the training Job")
    # Pods started for this run (disrupted ones excluded, as they are by the Job's retry budget); the Job's
    # counters lag its pods, so the larger of the two, which never goes down while a pod finishes.
    counted = len({p.name for p in pods if not p.disrupted})
    attempts = max(job.failed + job.succeeded + job.active, counted)
    if job.complete:
        return _trained(pods, attempts)
    if job.failed_condition:
        return _failed(job, pods, attempts)
    if len({p.index for p in pods if p.phase == "Succeeded" and p.exit_code == 0}) >= workers:
        return _trained(pods, attempts)
    if job.suspended:
        if suspend:
            return TrainingState(
                "Suspended",
                "Suspended",
                "suspended; resuming continues from the last checkpoint",
                attempts=attempts,
            )
        why = "waiting for admission by Kueue" if kueue else "the Job is suspended"
        return TrainingState("Queued", "Queued", why, attempts=attempts)
    return _running(job, pods, progress, run, attempts)
