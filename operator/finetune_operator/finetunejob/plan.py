"""One reconcile's decision, pure: observed world in, actions on children plus the new status out.

The planner joins the run bookkeeping (runs), the training state (status), the gate (gate) and serving
(builders.serving): a run that trained and passed its gate becomes `status.published`, the serving bundle
is rendered from that published run (so a later run that fails its gate leaves it untouched) and the
endpoint is reported only once the Deployment has rolled out and is Available.

Trust: what is published is decided here, from the termination message of the training pod the operator's Job
ran and the gate. The current run is published only by this pass's gate; the status is read back only for an
earlier published run, while a newer one trains or after it failed its gate (its number, and what it was trained
with: task, base model, adapter or not, rank), and `published.modelUri` is always re-derived as that run's own
`<output.uri>run-N/model/`, so no status writer can point serving at another place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from finetune_operator.api import conditions as cond
from finetune_operator.api.finetunejob import (
    FineTuneJobSpec,
    placement_spec_hash,
    training_spec_hash,
    validation_spec_hash,
)
from finetune_operator.api.labels import (
    ANNOTATION_PLACEMENT_HASH,
    ANNOTATION_RETRY,
    ANNOTATION_SPEC_HASH,
    COMPONENT_TRAINER,
    COMPONENT_VALIDATOR,
    Names,
)
from finetune_operator.api.modelserver import server_ref
from finetune_operator.api.objects import Event, Manifest, Owner
from finetune_operator.builders.policy import REFUSED, job_refusal
from finetune_operator.builders.serving import Published, endpoint_url, serving_bundle
from finetune_operator.core.observed import DeploymentObs, JobObs, PodObs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.gate import GateResult, evaluate_gate
from finetune_operator.finetunejob.progress import progress_of
from finetune_operator.finetunejob.runs import (
    ChildRef,
    current_run,
    job_actions,
    needs_new_placement,
    retired_children,
    training_children,
    validation_children,
)
from finetune_operator.finetunejob.tracking import degraded_condition, degraded_news, tracking_of
from finetune_operator.finetunejob.training_state import ErrorInfo, TrainingState, training_state
from finetune_operator.finetunejob.validation import Validation, validation_of
from finetune_operator.modelserver.plan import SharedVerdict, verdict_for

TERMINAL = ("Failed", "Succeeded", "Serving", "Publishing")
PROGRESS_SECONDS = 5.0
"""How often a pass reads the progress ConfigMap while the run's training pods run (the trainer writes at most
every 5 s): the operator does not watch ConfigMaps (it is granted no list or watch on them)."""


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Everything one reconcile knows about one FineTuneJob (keywords only: ten fields read badly by position)."""

    owner: Owner
    generation: int
    spec: FineTuneJobSpec
    status: dict[str, Any]
    jobs: Sequence[JobObs] = ()
    pods: Sequence[PodObs] = ()
    deployment: DeploymentObs | None = None
    secret_present: bool | None = None  # None: no secret named, or not checked
    now: str = ""
    retry_token: str = ""  # the FineTuneJob's finetune.dev/retry annotation
    server: dict[str, Any] | None = None  # the ModelServer serving.server names (its body), when it exists
    progress: dict[str, Any] | None = None  # the trainer's report, read and validated this pass (None: not read)


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


def run_of(snapshot: Snapshot) -> tuple[int, str]:
    training_hash = training_spec_hash(snapshot.spec)
    return current_run(snapshot.status, training_hash, snapshot.jobs), training_hash


def needs_secret_check(snapshot: Snapshot) -> bool:
    """Look the credentials secret up only while the run's Job does not exist yet (it would not start)."""
    if not snapshot.spec.storage.credentials_secret:
        return False
    run, _ = run_of(snapshot)
    finished = _finished_before(snapshot.status, run, snapshot.spec, _retry_requested(snapshot))
    return not any(j.run == run for j in snapshot.jobs) and not finished


def needs_progress_read(snapshot: Snapshot) -> bool:
    """Read the trainer's progress ConfigMap only while a training pod of the current run runs."""
    run, _ = run_of(snapshot)
    job = next((j for j in snapshot.jobs if j.run == run and j.component == COMPONENT_TRAINER), None)
    if job is None or job.finished:
        return False
    return any(p.run == run and p.component == COMPONENT_TRAINER and p.phase == "Running" for p in snapshot.pods)


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


def _published_of(spec: FineTuneJobSpec, run: int) -> Published:
    return Published(
        run=run,
        task=spec.base_model.task,
        base_model_uri=spec.base_model.uri,
        model_uri=spec.output.run_uri(run) + "model/",
        adapter=spec.method.produces_adapter,
        lora_rank=spec.method.lora.rank,
    )


@dataclass(frozen=True)
class ServingDecision:
    """What serving needs this pass: objects to apply and delete, the endpoint to report (None before the
    first rollout) and whether a replica is available now."""

    apply: list[Manifest] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    endpoint: dict[str, Any] | None = None
    available: bool = False
    shared: SharedVerdict | None = None  # serving.server: the verdict read from the ModelServer's status


def _shared_serving(snapshot: Snapshot, published: Published | None, own: list[ChildRef]) -> ServingDecision:
    """serving.server: no Deployment of its own (one left from before is removed); the adapter's place on
    the server is read from the server's status, which decides it (sharing.admit). The endpoint stays
    reported while a newer run loads."""
    remove = own if snapshot.deployment is not None else []
    if published is None:
        return ServingDecision(delete=remove)
    owner = snapshot.owner
    key = server_ref(snapshot.spec.serving.server, owner.namespace)
    verdict = verdict_for(owner.namespace, owner.name, published.run, key, snapshot.server)
    previous = dict(snapshot.status.get("endpoint") or {}) or None
    endpoint = verdict.endpoint or (previous if verdict.reason == "Loading" else None)
    return ServingDecision([], remove, endpoint, verdict.endpoint is not None, verdict)


def _serving(snapshot: Snapshot, published: Published | None, settings: Settings) -> ServingDecision:
    """Apply or remove the serving bundle. An endpoint stays reported while its pods are down."""
    spec, owner, deployment = snapshot.spec, snapshot.owner, snapshot.deployment
    names = Names.of(owner.name)
    bundle_refs = [
        ChildRef("apps/v1", "Deployment", names.serving, uid=deployment.uid if deployment else ""),
        ChildRef("v1", "Service", names.serving),
        ChildRef("policy/v1", "PodDisruptionBudget", names.serving),
        ChildRef("v1", "ConfigMap", names.serving_config),
    ]
    if spec.serving.enabled and spec.serving.server:
        return _shared_serving(snapshot, published, bundle_refs)
    if not spec.serving.enabled or published is None:
        remove = deployment is not None or bool(snapshot.status.get("endpoint"))
        return ServingDecision(delete=bundle_refs if remove else [])
    bundle = serving_bundle(spec, owner, published, settings)
    desired_hash = bundle[-1]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    apply: list[Manifest] = []
    delete: list[ChildRef] = []
    if deployment is None or deployment.spec_hash != desired_hash:
        apply = bundle
        if spec.serving.replicas == 1 and deployment is not None:
            delete = [bundle_refs[2]]  # one replica: a PDB would block every node drain
    previous = dict(snapshot.status.get("endpoint") or {}) or None
    if deployment is None:
        return ServingDecision(apply, delete)
    if not deployment.available_condition or deployment.available < 1:
        return ServingDecision(apply, delete, previous, False)
    if deployment.current and deployment.spec_hash == desired_hash:
        endpoint = {"url": endpoint_url(owner), "model": owner.name, "run": deployment.run}
        return ServingDecision(apply, delete, endpoint, True)
    return ServingDecision(apply, delete, previous, True)


def _ready(
    spec: FineTuneJobSpec,
    endpoint: dict[str, Any] | None,
    available: bool,
    published: Published | None,
    gen: int,
    state: str,
    shared: SharedVerdict | None = None,
) -> cond.Condition:
    if not spec.serving.enabled:
        return cond.condition(cond.READY, False, "ServingDisabled", "serving.enabled is false", gen)
    if published is None:
        return cond.condition(cond.READY, False, "NothingPublished", "no run has passed its gate yet", gen)
    if shared is not None:
        return cond.condition(cond.READY, shared.reason == "Serving", shared.reason, shared.message, gen)
    if endpoint is None:
        return cond.condition(cond.READY, False, "Publishing", f"rolling out run {published.run}", gen)
    if not available:
        message = f"no serving replica is available (run {endpoint.get('run')})"
        return cond.condition(cond.READY, False, "Unavailable", message, gen)
    if endpoint.get("run") != published.run:
        return cond.condition(
            cond.READY,
            False,
            "RollingOut",
            f"serving run {endpoint.get('run')} while run {published.run} rolls out",
            gen,
        )
    note = f"; {state}" if state else ""
    return cond.condition(cond.READY, True, "Serving", f"serving run {published.run}{note}", gen)


def _placement_of_run(status: dict[str, Any], job: JobObs | None, created: list[Manifest]) -> str | None:
    """The placement the run's pods run (or last ran) with: the Job's stamp, else what status remembers."""
    for manifest in created:
        if manifest["kind"] == "Job":
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
    created_job: bool,
    finished_before: bool,
    validation: Validation,
    refused: str | None = None,
    progress: dict[str, Any],
) -> TrainingState:
    """What the training side of run `run` is doing, from the most specific evidence at hand. `job` and `pods`
    are the validation Job's until the validation has passed, then the training Job's."""
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
    if job is None and created_job:
        # Created in this very pass: report where it is going (Queued), not the instant before (Pending).
        why = "waiting for admission by Kueue" if spec.queue_name else "waiting for its pods"
        return TrainingState("Queued", "JobCreated", f"{what} Job created; {why}")
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
    spec: FineTuneJobSpec, run: int, state: TrainingState, metrics: dict[str, Any], published: Published | None
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
    return state.phase, state.error, gate, _published_of(spec, run) if spec.serving.enabled else None


@dataclass(frozen=True)
class Outcome:
    """What one pass decided about the run, the gate and serving: the inputs of the status."""

    run: int
    validation: dict[str, Any] | None
    training_hash: str
    placement: str | None
    retry_token: str | None
    state: TrainingState
    phase: str
    error: ErrorInfo | None
    metrics: dict[str, Any]
    gate: GateResult | None
    published: Published | None
    serving: ServingDecision
    progress: dict[str, Any] | None = None  # status.progress: the trainer's validated report


def _validation(snapshot: Snapshot, run: int, settings: Settings) -> tuple[Validation, JobObs | None, list[PodObs]]:
    """Where run `run`'s data check stands, with its Job and pods. It has passed when it is switched off or a
    training Job exists already (made before, or by an operator that did not check): that Job is adopted."""
    spec = snapshot.spec
    if not settings.validation or any(j.run == run and j.component == COMPONENT_TRAINER for j in snapshot.jobs):
        return Validation(True, None, snapshot.status.get("validation")), None, []
    job = next((j for j in snapshot.jobs if j.run == run and j.component == COMPONENT_VALIDATOR), None)
    pods = [p for p in snapshot.pods if p.run == run and p.component == COMPONENT_VALIDATOR]
    kueue = bool(spec.queue_name)
    key = validation_spec_hash(spec)
    return validation_of(snapshot.status, key, run, job, pods, suspend=spec.suspend, kueue=kueue), job, pods


def plan(snapshot: Snapshot, settings: Settings) -> Plan:
    spec, status, owner = snapshot.spec, snapshot.status, snapshot.owner
    run, training_hash = run_of(snapshot)
    validation, validator, validator_pods = _validation(snapshot, run, settings)
    if validation.passed:
        job = next((j for j in snapshot.jobs if j.run == run and j.component == COMPONENT_TRAINER), None)
        pods = [p for p in snapshot.pods if p.run == run and p.component == COMPONENT_TRAINER]
        children = partial(training_children, spec, owner, run, training_hash, settings)
    else:
        job, pods = validator, validator_pods
        children = partial(validation_children, spec, owner, run, training_hash, settings)
    same_run = int(status.get("run") or 0) == run

    secret_missing = snapshot.secret_present is False
    refused = job_refusal(spec, settings)
    retry = _retry_requested(snapshot)
    finished_before = same_run and _finished_before(status, run, spec, retry)
    may_start = not secret_missing and not finished_before and refused is None
    actions = job_actions(spec, job, children, may_start=may_start, retry=retry)
    placement = _placement_of_run(status if same_run else {}, job, actions.create)
    created_job = any(m["kind"] == "Job" for m in actions.create)
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
    metrics = state.metrics or (status.get("metrics") if same_run else None) or {}
    earlier = _carried_over(spec, status.get("published"), run)
    phase, error, gate, published = _gated(spec, run, state, metrics, earlier)
    serving = _serving(snapshot, published, settings)
    if phase == "Trained":
        endpoint = serving.endpoint
        phase = (
            "Succeeded"
            if not spec.serving.enabled
            else ("Serving" if endpoint and endpoint.get("run") == run else "Publishing")
        )
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
    )
    new_status, events = status_of(snapshot, outcome)
    return Plan(
        run=run,
        create=actions.create,
        apply=serving.apply,
        delete=[*retired_children(owner, snapshot.jobs, run), *actions.delete, *serving.delete],
        suspend_job=actions.suspend_job,
        status=new_status,
        events=events,
        requeue_after=_requeue_after(snapshot, state, settings),
    )


def _requeue_after(snapshot: Snapshot, state: TrainingState, settings: Settings) -> float | None:
    """A missing Secret is looked up again, and a running trainer's progress read again, on a timer: neither
    is watched."""
    if state.reason == "SecretMissing":
        return settings.secret_recheck_seconds
    return PROGRESS_SECONDS if needs_progress_read(snapshot) else None


def status_of(snapshot: Snapshot, outcome: Outcome) -> tuple[dict[str, Any], list[Event]]:
    """The FineTuneJob's new status, and the Event to post when the phase changes. Pure."""
    spec, status, gen = snapshot.spec, snapshot.status, snapshot.generation
    run, state, phase, error, gate = outcome.run, outcome.state, outcome.phase, outcome.error, outcome.gate
    published, serving = outcome.published, outcome.serving
    same_run = int(status.get("run") or 0) == run
    trained = cond.condition(cond.TRAINED, state.phase == "Trained", state.reason, state.message, gen)
    if gate is None:
        gate_cond = cond.condition(cond.GATE_PASSED, None, "NotEvaluated", "the run has not finished training", gen)
    else:
        message = "every rule held" if gate.passed else (error.message if error else "")
        gate_cond = cond.condition(
            cond.GATE_PASSED, gate.passed, "Passed" if gate.passed else "GateFailed", message, gen
        )
    serving_note = f"run {run} is {phase}" if published and published.run != run else ""
    ready = _ready(spec, serving.endpoint, serving.available, published, gen, serving_note, serving.shared)
    run_uri = spec.output.run_uri(run)
    previous_tracking = (status.get("tracking") or {}) if same_run else {}
    tracking = tracking_of(run, state.tracking, outcome.progress or {}, previous_tracking)
    tracking_cond = degraded_condition(spec.tracking.mlflow is not None, tracking, gen)
    new_status: dict[str, Any] = {
        "observedGeneration": gen,
        "phase": phase,
        "run": run,
        "trainingSpecHash": outcome.training_hash,
        "placementHash": outcome.placement,
        "validation": outcome.validation,
        "retryToken": outcome.retry_token,
        "attempts": max(state.attempts, int(status.get("attempts") or 0) if same_run else 0),
        "conditions": cond.merge(
            status.get("conditions"), [trained, gate_cond, ready, *filter(None, [tracking_cond])], snapshot.now
        ),
        "metrics": outcome.metrics or None,
        "gate": gate.to_status() if gate else None,
        "artifacts": {
            "model": run_uri + "model/",
            "report": run_uri + "report.html",
            "checkpoints": run_uri + "checkpoints/",
            "tensorboard": run_uri + "tensorboard/",
        },
        "tracking": tracking,
        "endpoint": serving.endpoint,
        "published": published.to_status() if published else None,
        "progress": outcome.progress,
        "error": error.to_status() if error else None,
    }
    events: list[Event] = []
    if status.get("phase") != phase:
        kind = "Warning" if phase == "Failed" or (phase == "Pending" and error) else "Normal"
        message = error.message if error else f"run {run}: {state.message}"
        events.append(Event(kind, phase, message))
    news = degraded_news(previous_tracking, tracking)
    if news:
        events.append(Event("Warning", "TrackingDegraded", news))
    return new_status, events
