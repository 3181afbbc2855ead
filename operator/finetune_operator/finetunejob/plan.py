"""One reconcile's decision, pure: observed world (snapshot.py) in, actions on children plus the new status out.

The planner joins the run bookkeeping (runs), the data check (validation), the training state (training_state),
the gate (gate), serving (serving.py: a run that trained and passed its gate is published and served) and the
status (status.py).

Trust: what is published is decided here, from the termination message of the training pod the operator's Job
ran and the gate. The current run is published only by this pass's gate; the status is read back only for an
earlier published run, while a newer one trains or after it failed its gate (its number, and what it was trained
with: task, base model, adapter or not, rank), and `published.modelUri` is always re-derived as that run's own
`<output.uri>run-N/model/`, so no status writer can point serving at another place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from finetune_operator.api.finetunejob import (
    FineTuneJobSpec,
    placement_spec_hash,
    training_spec_hash,
    validation_spec_hash,
)
from finetune_operator.api.labels import (
    ANNOTATION_PLACEMENT_HASH,
    ANNOTATION_RETRY,
    COMPONENT_TRAINER,
    COMPONENT_VALIDATOR,
    Names,
)
from finetune_operator.api.objects import Event, Manifest
from finetune_operator.api.published import Published
from finetune_operator.builders.policy import REFUSED, job_refusal
from finetune_operator.builders.training import ephemeral_storage, validation_backoff_limit, validation_pod
from finetune_operator.core.observed import JobObs, PodObs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob import secret_refs
from finetune_operator.finetunejob.disk import DISK_LIMIT_EXCEEDED, disk_limit_message, own_limit_eviction
from finetune_operator.finetunejob.evictions import (
    EVENT_REASON,
    EVICTED_REPEATEDLY,
    Evictions,
    counted,
    event_message,
    failure_message,
    pressure_resource,
)
from finetune_operator.finetunejob.gate import GateResult, evaluate_gate
from finetune_operator.finetunejob.oom import OOM_KILLED, OUT_OF_MEMORY, explained, killed_pod
from finetune_operator.finetunejob.progress import progress_of
from finetune_operator.finetunejob.runs import (
    ChildRef,
    JobActions,
    current_run,
    job_actions,
    needs_new_placement,
    retired_children,
    training_children,
    validation_children,
    validation_pod_children,
)
from finetune_operator.finetunejob.serving import published_of, serving_decision
from finetune_operator.finetunejob.snapshot import Snapshot
from finetune_operator.finetunejob.status import Outcome, status_of
from finetune_operator.finetunejob.training_state import WAITING_FOR_PODS, ErrorInfo, TrainingState, training_state
from finetune_operator.finetunejob.validation import (
    Validation,
    cached_base_model_uri,
    recorded_commits,
    validation_of,
)
from finetune_operator.finetunejob.validation_pod import (
    as_job,
    check_pods,
    live_attempts,
    next_attempt,
    pod_actions,
    retired_checks,
)

__all__ = ["Plan", "Snapshot", "needs_secret_check", "plan", "run_of", "secrets_to_check"]

TERMINAL = ("Failed", "Succeeded", "Serving", "Publishing")
STARTS_A_STAGE = ("Job", "Pod")  # what a plan creates to start a stage: a Job, or the data check's bare pod


@dataclass
class Plan:
    run: int
    create: list[Manifest] = field(default_factory=list)
    apply: list[Manifest] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    suspend_job: tuple[str, bool] | None = None
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    evicted: tuple[str, ...] = ()  # what the node ran low on, per node-pressure eviction counted first this pass


def run_of(snapshot: Snapshot) -> tuple[int, str]:
    training_hash = training_spec_hash(snapshot.spec)
    return current_run(snapshot.status, training_hash, snapshot.jobs), training_hash


def _before_its_job(snapshot: Snapshot) -> bool:
    """The run has no Job yet and has not finished: the next Job is still to be made."""
    run, _ = run_of(snapshot)
    finished = _finished_before(snapshot.status, run, snapshot.spec, _retry_requested(snapshot))
    started = any(j.run == run for j in snapshot.jobs) or bool(check_pods(snapshot.pods, run))
    return not started and not finished


def needs_secret_check(snapshot: Snapshot) -> bool:
    """Look the credentials secret up only while the run's Job does not exist yet (it would not start)."""
    return bool(snapshot.spec.storage.credentials_secret) and _before_its_job(snapshot)


def secrets_to_check(snapshot: Snapshot, settings: Settings) -> list[str]:
    """The Secrets to look up (metadata only) before the run's next Job: the storage credentials, and the hf://
    sources' tokenSecrets while that Job is the validation Job, the one pod that reads them. Only while the run
    has no Job yet: a Job's pod that waits for a Secret is reported from its waiting message (secret_refs.py)."""
    if not _before_its_job(snapshot):
        return []
    run, _ = run_of(snapshot)
    names = [snapshot.spec.storage.credentials_secret] if snapshot.spec.storage.credentials_secret else []
    tokens = [r.name for r in secret_refs.secret_refs(snapshot.spec) if r.field.endswith(".tokenSecret")]
    if tokens and not _validation(snapshot, run, settings)[0].passed:
        names += [n for n in tokens if n not in names]
    return names


def _retry_requested(snapshot: Snapshot) -> bool:
    """A retry token the operator has not acted on yet (status.retryToken records the last one it has)."""
    return bool(snapshot.retry_token) and snapshot.retry_token != snapshot.status.get("retryToken")


def _failed_in_training(status: dict[str, Any], run: int) -> bool:
    """Status says run `run` failed before it had a model (a failed gate had one: retrying cannot help)."""
    error_code = (status.get("error") or {}).get("code")
    return int(status.get("run") or 0) == run and status.get("phase") == "Failed" and error_code != "GateFailed"


def _finished_before(status: dict[str, Any], run: int, spec: FineTuneJobSpec, retry: bool = False) -> bool:
    """Whether status says run `run` ended, for good. A training failure is instead to be retried when the
    placement has changed since (more memory after an OOM kill) or a new retry token asks for it."""
    if int(status.get("run") or 0) != run or status.get("phase") not in TERMINAL:
        return False
    if (status.get("error") or {}).get("code") == REFUSED:
        return False  # refused by the admin's policy: it never started, and may once the spec or policy changes
    ran_with = status.get("placementHash")
    placement_changed = bool(ran_with) and ran_with != placement_spec_hash(spec)
    return not (_failed_in_training(status, run) and (placement_changed or retry))


def _remembered(status: dict[str, Any]) -> TrainingState:
    """The outcome of a run whose Job is gone (deleted by hand): what status said, never a retrain."""
    error = status.get("error") or {}
    if status.get("phase") == "Failed" and error.get("code") != "GateFailed":
        info = ErrorInfo(str(error.get("code", "JobFailed")), str(error.get("message", "")))
        return TrainingState("Failed", info.code, info.message, info)
    return TrainingState("Trained", "Trained", "training and evaluation finished", metrics=status.get("metrics") or {})


def _carried_over(spec: FineTuneJobSpec, raw: Any, run: int) -> Published | None:
    """The published run an earlier pass recorded in status, if it is older than the current `run` (the current
    run is published only by this pass's gate); its model is re-derived from the run's own output folder, so a
    record someone else wrote can never point serving at another place. Anything malformed: nothing."""
    if not isinstance(raw, dict):
        return None
    try:
        earlier = int(raw["run"])
        rank = int(raw.get("loraRank", spec.method.lora.rank))
    except (KeyError, TypeError, ValueError):
        return None
    if not 1 <= earlier < run:
        return None
    return Published(
        run=earlier,
        task=str(raw.get("task", spec.base_model.task)),
        base_model_uri=str(raw.get("baseModelUri", spec.base_model.uri)),
        model_uri=spec.output.run_uri(earlier) + "model/",
        adapter=raw.get("adapter") is not False,
        lora_rank=rank,
    )


def _placement_of_run(status: dict[str, Any], job: JobObs | None, created: list[Manifest]) -> str | None:
    """The placement the run's pods run (or last ran) with: the Job's (or check pod's) stamp, else what status
    remembers."""
    for manifest in created:
        if manifest["kind"] in STARTS_A_STAGE:
            return str(manifest["metadata"]["annotations"][ANNOTATION_PLACEMENT_HASH])
    if job is not None and job.placement_hash:
        return job.placement_hash
    remembered = status.get("placementHash")
    return str(remembered) if remembered else None


def _state(
    snapshot: Snapshot,
    job: JobObs | None,
    pods: Sequence[PodObs],
    run: int,
    *,
    created_job: str,
    finished_before: bool,
    validation: Validation,
    refused: str | None = None,
    progress: dict[str, Any],
) -> TrainingState:
    """What the training side of run `run` is doing, from the most specific evidence at hand. `job` and `pods`
    are the validation Job's (or what its bare pods amount to) until the validation has passed, then the training
    Job's. `created_job`: the kind this pass created to start the stage ("Job", "Pod"; "" for none)."""
    spec, status = snapshot.spec, snapshot.status
    what = "training" if validation.passed else "validation"
    if job is not None and job.failed_condition and _retry_requested(snapshot):
        return TrainingState(
            "Queued",
            "RetryRequested",
            f"retrying run {run} as the {ANNOTATION_RETRY} annotation asks; the new pods resume from its last "
            "checkpoint",
        )
    if job is not None and needs_new_placement(spec, job):
        return TrainingState(
            "Queued",
            "PlacementChanged",
            f"replacing the {what} Job with the new placement (resources, node selection, pod metadata or "
            "queue); the new pods resume this run from its last checkpoint",
        )
    if refused is not None and job is None:
        # a Job made before the policy changed is left to finish; no new one is made
        return TrainingState("Failed", REFUSED, refused, ErrorInfo(REFUSED, refused))
    # a tokenSecret absent (the storage Secret present): the same words as for a pod that waits for it
    token_problem = (
        secret_refs.absent_message(spec, snapshot.owner.namespace, snapshot.absent_secrets)
        if snapshot.secret_present is False and spec.storage.credentials_secret not in snapshot.absent_secrets
        else None
    )
    if token_problem is not None:
        return TrainingState("Pending", "SecretMissing", token_problem, ErrorInfo("SecretMissing", token_problem))
    if snapshot.secret_present is False:
        name = spec.storage.credentials_secret
        missing = ErrorInfo(
            "SecretMissing",
            f"waiting for Secret {name!r} (keys AWS_ACCESS_KEY_ID, "
            f"AWS_SECRET_ACCESS_KEY) in namespace {snapshot.owner.namespace}",
        )
        return TrainingState("Pending", "SecretMissing", missing.message, missing)
    if job is None and finished_before:
        return _remembered(status)
    if job is None and created_job == "Pod":
        return TrainingState("Queued", "JobCreated", f"{what} pod created; waiting for it to start")
    if job is None and created_job and spec.queue_name:
        # Created in this very pass: report where it is going (Queued), not the instant before (Pending).
        return TrainingState("Queued", "JobCreated", f"{what} Job created; waiting for admission by Kueue")
    if job is None and created_job:
        # The words the Job's first observation gives (training_state.WAITING_FOR_PODS), so that observation
        # is no second status write saying the same thing.
        if what == "training":
            return WAITING_FOR_PODS
        return TrainingState("Queued", "JobCreated", f"{what} Job created; waiting for its pods")
    if validation.state is not None:
        return validation.state
    return training_state(
        job,
        pods,
        suspend=spec.suspend,
        kueue=bool(spec.queue_name),
        progress=progress,
        run=run,
        workers=spec.distributed.workers,
    )


def _gated(
    spec: FineTuneJobSpec,
    run: int,
    state: TrainingState,
    metrics: dict[str, Any],
    published: Published | None,
    cached_base: str | None = None,
) -> tuple[str, ErrorInfo | None, GateResult | None, Published | None]:
    """(phase, error, gate result, model to serve) once the gate has judged a trained run. A run that fails
    its gate leaves the published model as it was; nothing is published while serving is disabled."""
    if state.phase != "Trained":
        return state.phase, state.error, None, published if spec.serving.enabled else None
    gate = evaluate_gate(list(spec.evaluation.gate), metrics)
    if not gate.passed:
        failing = "; ".join(r.describe() for r in gate.failures)
        error = ErrorInfo("GateFailed", f"run {run} failed its gate: {failing}")
        return "Failed", error, gate, published if spec.serving.enabled else None
    return state.phase, state.error, gate, published_of(spec, run, cached_base) if spec.serving.enabled else None


def _checks_by_pod(snapshot: Snapshot, run: int) -> bool:
    """Whether run `run`'s data check is (or is to be) bare pods rather than a Job: always, unless a Kueue queue
    must admit it (Kueue admits Jobs) or a Job made for it exists (an older operator's, or one from before a
    queue was set); pods made before a queue was set finish their way."""
    if any(j.run == run and j.component == COMPONENT_VALIDATOR for j in snapshot.jobs):
        return False
    return not snapshot.spec.queue_name or bool(check_pods(snapshot.pods, run))


def _validation(snapshot: Snapshot, run: int, settings: Settings) -> tuple[Validation, JobObs | None, list[PodObs]]:
    """Where run `run`'s data check stands, with its Job (or what its bare pods amount to, validation_pod.as_job)
    and pods. It has passed when it is switched off or a training Job exists already (made before, or by an
    operator that did not check): that Job is adopted."""
    spec = snapshot.spec
    if not settings.validation or any(j.run == run and j.component == COMPONENT_TRAINER for j in snapshot.jobs):
        return Validation(True, None, snapshot.status.get("validation")), None, []
    kueue = bool(spec.queue_name)
    key = validation_spec_hash(spec)
    if _checks_by_pod(snapshot, run):
        pods = check_pods(snapshot.pods, run)
        name = Names.of(snapshot.owner.name).validation_job(run)
        job = as_job(name, run, pods, validation_backoff_limit(settings), suspend=spec.suspend)
    else:
        job = next((j for j in snapshot.jobs if j.run == run and j.component == COMPONENT_VALIDATOR), None)
        pods = [p for p in snapshot.pods if p.run == run and p.component == COMPONENT_VALIDATOR]
    return validation_of(snapshot.status, key, run, job, pods, suspend=spec.suspend, kueue=kueue), job, pods


def _out_of_memory_explained(
    state: TrainingState,
    snapshot: Snapshot,
    validation: Validation,
    job: JobObs | None,
    pods: Sequence[PodObs],
    settings: Settings,
) -> TrainingState:
    """An OutOfMemory failure with the memory plan's numbers and the changes that would fit (oom.py)."""
    if state.error is None or state.error.code != OUT_OF_MEMORY or job is None:
        return state
    record = validation.record or snapshot.status.get("validation") or {}
    killed = killed_pod(pods)
    message = explained(
        state.error.message,
        snapshot.spec,
        record.get("memoryPlan") if isinstance(record, dict) else None,
        host=killed is not None and killed.termination_reason == OOM_KILLED,
        validation_memory=settings.validation_memory if job.component == COMPONENT_VALIDATOR else None,
    )
    return replace(state, message=message, error=ErrorInfo(OUT_OF_MEMORY, message))


def _disk_limit_exceeded(
    state: TrainingState, snapshot: Snapshot, validation: Validation, job: JobObs | None, pods: Sequence[PodObs]
) -> tuple[TrainingState, list[ChildRef]]:
    """A training pod evicted for exceeding its own disk limit fails the run, and its Job is deleted so that no
    identical replacement starts (disk.py: the Job controller ignores evictions). Nothing to do otherwise."""
    if not validation.passed or job is None or job.finished or job.deleting:
        return state, []
    evicted = own_limit_eviction(pods)
    if evicted is None:
        return state, []
    record = validation.record or snapshot.status.get("validation") or {}
    disk_plan = record.get("diskPlan") if isinstance(record, dict) else None
    total = disk_plan.get("totalBytes") if isinstance(disk_plan, dict) else None
    limit = ephemeral_storage(snapshot.spec, total if isinstance(total, int) else None)
    message = disk_limit_message(evicted, limit, disk_plan)
    failed = TrainingState(
        "Failed", DISK_LIMIT_EXCEEDED, message, ErrorInfo(DISK_LIMIT_EXCEEDED, message), attempts=state.attempts
    )
    return failed, [ChildRef("batch/v1", "Job", job.name, uid=job.uid)]


def _evicted_repeatedly(
    state: TrainingState,
    snapshot: Snapshot,
    run: int,
    job: JobObs | None,
    pods: Sequence[PodObs],
    settings: Settings,
) -> tuple[TrainingState, Evictions, list[ChildRef]]:
    """The node-pressure evictions of the run's current Job counted (evictions.py); at the operator's limit an
    unfinished run fails EvictedRepeatedly and its Job is deleted, so that the Job controller, which ignores
    evictions, starts no further replacement. Without a Job, status keeps what it counted for this run."""
    previous = snapshot.status.get("evictions")
    if job is None:
        kept = previous if isinstance(previous, dict) and previous.get("run") == run else None
        return state, Evictions(kept), []
    evictions = counted(run, job, pods, previous)
    limit = settings.node_pressure_evictions
    if evictions.count < limit or job.complete or state.phase in ("Failed", "Trained"):
        return state, evictions, []
    message = failure_message(run, evictions, limit)
    failed = TrainingState(
        "Failed", EVICTED_REPEATEDLY, message, ErrorInfo(EVICTED_REPEATEDLY, message), attempts=state.attempts
    )
    stop = [] if job.deleting else [ChildRef("batch/v1", "Job", job.name, uid=job.uid)]
    return failed, evictions, stop


def _after_training(spec: FineTuneJobSpec, phase: str, endpoint: dict[str, Any] | None, run: int) -> str:
    """A trained run that passed its gate: Succeeded without serving, else Serving once its endpoint serves it."""
    if phase != "Trained":
        return phase
    if not spec.serving.enabled:
        return "Succeeded"
    return "Serving" if endpoint and endpoint.get("run") == run else "Publishing"


def _stage_of_run(
    snapshot: Snapshot, run: int, training_hash: str, settings: Settings
) -> tuple[Validation, JobObs | None, list[PodObs], Callable[[], list[Manifest]]]:
    """Run `run`'s data check, and the Job, pods and children of the stage it is in: the validation's until it
    has passed, then the training's."""
    spec, owner = snapshot.spec, snapshot.owner
    validation, validator, validator_pods = _validation(snapshot, run, settings)
    if not validation.passed:
        first = validation_pod_children if _checks_by_pod(snapshot, run) else validation_children
        return validation, validator, validator_pods, partial(first, spec, owner, run, training_hash, settings)
    job = next((j for j in snapshot.jobs if j.run == run and j.component == COMPONENT_TRAINER), None)
    pods = [p for p in snapshot.pods if p.run == run and p.component == COMPONENT_TRAINER]
    here = validator is not None and not validator.deleting
    commits = recorded_commits(validation.record)
    disk = (validation.record or {}).get("diskPlan") or {}
    disk_bytes = disk.get("totalBytes") if isinstance(disk, dict) and isinstance(disk.get("totalBytes"), int) else None
    children = partial(
        training_children,
        spec,
        owner,
        run,
        training_hash,
        settings,
        validated_here=here,
        disk_bytes=disk_bytes,
        commits=commits,
    )
    return validation, job, pods, children


def _stage_actions(
    snapshot: Snapshot,
    run: int,
    training_hash: str,
    settings: Settings,
    stage: tuple[Validation, JobObs | None, list[PodObs], Callable[[], list[Manifest]]],
    *,
    may_start: bool,
    retry: bool,
) -> tuple[JobActions, bool]:
    """What to create or delete for the stage the run is in, and whether that stage is a data check by bare pods
    (validation_pod.pod_actions; else the Job's runs.job_actions)."""
    spec, owner = snapshot.spec, snapshot.owner
    validation, job, pods, children = stage
    if validation.passed or not _checks_by_pod(snapshot, run):
        return job_actions(spec, job, children, may_start=may_start, retry=retry), False
    attempt = next_attempt(Names.of(owner.name), run, pods)
    again = partial(validation_pod, spec, owner, run, training_hash, settings, attempt)
    actions = pod_actions(
        job,
        pods,
        children,
        again,
        placement_hash=placement_spec_hash(spec),
        suspend=spec.suspend,
        may_start=may_start,
        retry=retry,
    )
    return actions, True


def plan(snapshot: Snapshot, settings: Settings) -> Plan:
    spec, status, owner = snapshot.spec, snapshot.status, snapshot.owner
    run, training_hash = run_of(snapshot)
    stage = _stage_of_run(snapshot, run, training_hash, settings)
    validation, job, pods, _ = stage
    same_run = int(status.get("run") or 0) == run
    secret_missing = snapshot.secret_present is False
    refused = job_refusal(spec, settings)
    retry = _retry_requested(snapshot)
    finished_before = same_run and _finished_before(status, run, spec, retry)
    may_start = not secret_missing and not finished_before and refused is None
    actions, bare_check = _stage_actions(
        snapshot, run, training_hash, settings, stage, may_start=may_start, retry=retry
    )
    placement = _placement_of_run(status if same_run else {}, job, actions.create)
    created_job = next((str(m["kind"]) for m in actions.create if m["kind"] in STARTS_A_STAGE), "")
    failed_run = (job is not None and job.failed_condition) or (job is None and _failed_in_training(status, run))
    # A token is recorded once acted on (the failed run's new Job exists) or when there is nothing to retry
    # (so a later failure is not retried by an old token); until then the old one stays, and passes go on.
    retry_token = status.get("retryToken") if retry and failed_run and not created_job else snapshot.retry_token
    progress = progress_of(run, snapshot.progress, status.get("progress"))
    state = _state(
        snapshot,
        job,
        pods,
        run,
        created_job=created_job,
        finished_before=finished_before,
        validation=validation,
        refused=refused,
        progress=progress or {},
    )
    state = secret_refs.explained(state, spec, owner.namespace)  # a Secret or key the pods wait for, by field
    state = _out_of_memory_explained(state, snapshot, validation, job, pods, settings)
    state, stopped = _disk_limit_exceeded(state, snapshot, validation, job, pods)
    state, evictions, evicted_stop = _evicted_repeatedly(state, snapshot, run, job, pods, settings)
    if bare_check and evicted_stop:  # no Job to delete: stop the attempt, and start none
        evicted_stop = live_attempts(pods)
        actions = JobActions([m for m in actions.create if m["kind"] != "Pod"], actions.delete, None)
    metrics = state.metrics or (status.get("metrics") if same_run else None) or {}
    earlier = _carried_over(spec, status.get("published"), run)
    cached_base = cached_base_model_uri(spec, validation.record)  # an hf:// base model's copy
    phase, error, gate, published = _gated(spec, run, state, metrics, earlier, cached_base)
    serving = serving_decision(snapshot, published, settings)
    phase = _after_training(spec, phase, serving.endpoint, run)
    outcome = Outcome(
        run=run,
        validation=validation.record,
        training_hash=training_hash,
        placement=placement,
        retry_token=retry_token or None,
        state=state,
        phase=phase,
        error=error,
        metrics=metrics,
        gate=gate,
        published=published,
        serving=serving,
        progress=progress,
        evictions=evictions.record,
    )
    new_status, events = status_of(snapshot, outcome)
    limit = settings.node_pressure_evictions
    first = evictions.count - len(evictions.new) + 1
    events += [
        Event("Warning", EVENT_REASON, event_message(run, p, first + i, limit)) for i, p in enumerate(evictions.new)
    ]
    return Plan(
        run=run,
        create=actions.create,
        apply=serving.apply,
        delete=[
            *retired_children(owner, snapshot.jobs, run),
            *retired_checks(snapshot.pods, run),
            *actions.delete,
            *stopped,
            *evicted_stop,
            *serving.delete,
        ],
        suspend_job=actions.suspend_job,
        status=new_status,
        events=events,
        requeue_after=_requeue_after(snapshot, state, published is not None, settings),
        evicted=tuple(pressure_resource(p.eviction) for p in evictions.new),
    )


def _requeue_after(snapshot: Snapshot, state: TrainingState, published: bool, settings: Settings) -> float | None:
    """A missing Secret is looked up again on a timer (Secrets are not watched: the operator reads none), and so
    is a published job's generated key Secret, so that deleting it gets a new key within key_recheck_seconds
    (controller._key_deleted). The trainer's progress needs no timer: its ConfigMap is watched
    (registration.py)."""
    if state.reason == "SecretMissing":
        return settings.secret_recheck_seconds
    if settings.secret_check and published and snapshot.spec.serving.generates_key:
        return settings.key_recheck_seconds
    return None
