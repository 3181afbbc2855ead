"""A FineTuneJob object -> OpenAI's `FineTuningJob`, its events and its checkpoints. Pure.

Why apart from jobs.py (the create side): this is the read side, a function of the object the API server returns
(and of the job's Kubernetes Events), so a job made an hour ago by another API replica, or patched by the
operator since, shows the same; nothing is remembered between requests.

Status (OpenAI has six; the CRD's `status.phase` has ten):

| OpenAI | FineTuneJob |
|---|---|
| `cancelled` | the annotation `api.finetune.dev/cancelled-at` (a cancel suspends the job and sets it) |
| `validating_files` | `Validating`; `Pending`/`Queued` while the data check waits (`_validating`) |
| `queued` | `Pending`/`Queued` waiting to train (a node, Kueue, a retry); `Suspended` (paused) |
| `running` | `Training`, `Evaluating`, `Publishing` (the model is not answering yet) |
| `succeeded` | `Serving` (the endpoint answers with this run), or `Succeeded` (serving off: DELETE /v1/models) |
| `failed` | `Failed` (`error` is `status.error`: the trainer's or the operator's code, its message) |
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from finetune_trainer.finetuning_api import jobs, result_files

PAUSED_STATUS = "queued"
"""OpenAI's typed `status` has no `paused`: a paused job waits for a resume, the nearest of its six values."""
FILE_PARAM_CODES = {"DatasetInvalid", "DatasetNotFound", "StorageNotFound", "UnsafeObjectKey"}
MODEL_PARAM_CODES = {"ModelInvalid", "ModelNotFound"}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def timestamp(text: object) -> int | None:
    """Unix seconds of an RFC 3339 time as Kubernetes writes it (None when absent or unreadable)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def is_api_job(obj: Mapping[str, Any]) -> bool:
    """Made through this API (only those are OpenAI jobs: a kubectl-made FineTuneJob has no file ids)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(jobs.API_LABEL) == jobs.API_LABEL_VALUE


def job_id(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def created_at(obj: Mapping[str, Any]) -> int:
    return timestamp((obj.get("metadata") or {}).get("creationTimestamp")) or 0


def _validated(status: Mapping[str, Any]) -> bool:
    validation = status.get("validation") or {}
    return bool(validation.get("passed")) and validation.get("run", status.get("run")) == status.get("run")


def _validating(status: Mapping[str, Any]) -> bool:
    """Whether a waiting run waits for its data check: nothing observed yet, or the operator's `Trained`
    condition says the data check (its pod, or Job) is what waits (its messages start with "validation"). A run
    whose check passed, or that has none (the chart's `validation.enabled: false`), waits to train: `queued`."""
    if _validated(status):
        return False
    trained = next((c for c in status.get("conditions") or [] if c.get("type") == "Trained"), None)
    return trained is None or str(trained.get("message") or "").startswith("validation")


def openai_status(obj: Mapping[str, Any]) -> str:
    """The OpenAI status of a FineTuneJob (the table in this module's docstring)."""
    if jobs.A_CANCELLED_AT in _annotations(obj):
        return "cancelled"
    status = _status(obj)
    phase = status.get("phase") or "Pending"
    if phase in ("Serving", "Succeeded"):
        return "succeeded"
    if phase == "Failed":
        return "failed"
    if phase in ("Training", "Evaluating", "Publishing"):
        return "running"
    if phase == "Suspended":
        return PAUSED_STATUS
    if phase == "Validating":
        return "validating_files"
    return "validating_files" if _validating(status) else "queued"


def is_paused(obj: Mapping[str, Any]) -> bool:
    return bool(_spec(obj).get("suspend")) and jobs.A_CANCELLED_AT not in _annotations(obj)


def fine_tuned_model_name(obj: Mapping[str, Any]) -> str:
    """`ft:<model>:<namespace>:<suffix>:<job id>` (an empty suffix leaves `::`, as OpenAI writes it)."""
    annotations = _annotations(obj)
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    return f"ft:{annotations.get(jobs.A_MODEL, '')}:{namespace}:{annotations.get(jobs.A_SUFFIX, '')}:{job_id(obj)}"


def parse_fine_tuned_model(name: str) -> tuple[str, str] | None:
    """(namespace, job id) of a fine-tuned model name, or None when `name` is not one (a base model, a
    checkpoint's name `...:ckpt-step-N`, anything else)."""
    parts = name.split(":")
    if len(parts) != 5 or parts[0] != "ft" or not parts[2] or not jobs.JOB_NAME.match(parts[4]):
        return None
    return parts[2], parts[4]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _epochs(value: object) -> int | str:
    number = _number(value)
    return max(1, round(number)) if number is not None else 3


def hyperparameters(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters the job runs with, from its spec (the truth), in OpenAI's names."""
    spec_hyper = _spec(obj).get("hyperparameters") or {}
    base = _number(_float_or_none(_annotations(obj).get(jobs.A_BASE_LEARNING_RATE))) or 2e-4
    rate = _number(spec_hyper.get("learningRate")) or 2e-4
    batch = spec_hyper.get("batchSize", 8)
    return {
        "n_epochs": _epochs(spec_hyper.get("epochs", 3)),
        "batch_size": batch if batch == "auto" or isinstance(batch, int) else "auto",
        "learning_rate_multiplier": float(f"{rate / base:.6g}"),
    }


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def method(obj: Mapping[str, Any]) -> dict[str, Any]:
    kind = _annotations(obj).get(jobs.A_METHOD, "supervised")
    hyper = hyperparameters(obj)
    if kind == "dpo":
        beta = _number(((_spec(obj).get("method") or {}).get("dpo") or {}).get("beta")) or jobs.DEFAULT_BETA
        return {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "beta": beta}}}
    return {"type": "supervised", "supervised": {"hyperparameters": hyper}}


def _finished_at(obj: Mapping[str, Any], state: str) -> int | None:
    if state == "cancelled":
        return _int(_annotations(obj).get(jobs.A_CANCELLED_AT))
    if state not in ("succeeded", "failed"):
        return None
    times = [timestamp(c.get("lastTransitionTime")) for c in _status(obj).get("conditions") or []]
    return max((t for t in times if t is not None), default=None)


def _int(text: object) -> int | None:
    try:
        return int(str(text))
    except ValueError:
        return None


def _trained_tokens(obj: Mapping[str, Any], state: str) -> int | None:
    """Tokens of the training split times the epochs (OpenAI's billable tokens), once the job succeeded."""
    if state != "succeeded":
        return None
    tokens = _number(((_status(obj).get("validation") or {}).get("tokens") or {}).get("train"))
    epochs = _number((_spec(obj).get("hyperparameters") or {}).get("epochs", 3))
    return round(tokens * epochs) if tokens is not None and epochs is not None else None


def _error(obj: Mapping[str, Any], state: str) -> dict[str, Any] | None:
    if state != "failed":
        return None
    error = _status(obj).get("error") or {}
    code = str(error.get("code") or "JobFailed")
    message = str(error.get("message") or "the fine-tuning job failed")
    param = None
    if code in FILE_PARAM_CODES:
        validation_uri = (((_spec(obj).get("dataset") or {}).get("validation")) or {}).get("uri")
        param = "validation_file" if validation_uri and validation_uri in message else "training_file"
    elif code in MODEL_PARAM_CODES:
        param = "model"
    return {"code": code, "message": message, "param": param}


def _result_files(obj: Mapping[str, Any], state: str) -> list[str]:
    """The succeeded run's `step_metrics.csv` (result_files.py), as OpenAI gives a succeeded job one file."""
    run = result_files.offered_run(obj) if state == "succeeded" else None
    return [result_files.result_file_id(job_id(obj), run)] if run is not None else []


def to_openai_job(obj: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's `FineTuningJob` of a FineTuneJob made by this API."""
    annotations = _annotations(obj)
    state = openai_status(obj)
    progress = _status(obj).get("progress") or {}
    metadata = job_metadata(obj)
    return {
        "id": job_id(obj),
        "object": "fine_tuning.job",
        "created_at": created_at(obj),
        "model": annotations.get(jobs.A_MODEL, ""),
        "organization_id": (obj.get("metadata") or {}).get("namespace", ""),
        "training_file": annotations.get(jobs.A_TRAINING_FILE, ""),
        "validation_file": annotations.get(jobs.A_VALIDATION_FILE),
        "status": state,
        "fine_tuned_model": fine_tuned_model_name(obj) if state == "succeeded" else None,
        "finished_at": _finished_at(obj, state),
        "estimated_finish": timestamp(progress.get("estimatedFinishTime")) if state == "running" else None,
        "trained_tokens": _trained_tokens(obj, state),
        "error": _error(obj, state),
        "result_files": _result_files(obj, state),
        "hyperparameters": hyperparameters(obj),
        "method": method(obj),
        "metadata": metadata or None,
        "seed": int((_spec(obj).get("hyperparameters") or {}).get("seed", 42)),
        "integrations": [],
    }


def job_metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    """The metadata the create stored (an annotation a kubectl edit broke reads as none, not as an error)."""
    try:
        stored = json.loads(_annotations(obj).get(jobs.A_METADATA) or "{}")
    except ValueError:
        return {}
    if not isinstance(stored, dict):
        return {}
    return {str(key): str(value) for key, value in stored.items()}


def matches_metadata(obj: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    """The list filter `metadata[k]=v`: every pair given is in the job's metadata."""
    metadata = job_metadata(obj) if wanted else {}
    return all(metadata.get(key) == value for key, value in wanted.items())


def sort_jobs(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Newest first, as OpenAI lists jobs (ties by id, so a page boundary is stable)."""
    return sorted(objects, key=lambda obj: (-created_at(obj), job_id(obj)))


T = TypeVar("T")


def page(items: Sequence[T], ident: Any, after: str | None, limit: int) -> tuple[list[T], bool]:
    """OpenAI's cursor pagination over an ordered list: the `limit` items after the one whose id is `after`
    (an `after` no longer in the list gives an empty page), and whether more follow."""
    start = 0
    if after:
        ids = [ident(item) for item in items]
        if after not in ids:
            return [], False
        start = ids.index(after) + 1
    chosen = list(items[start : start + limit])
    return chosen, start + limit < len(items)


def _event_id(*parts: object) -> str:
    return "ftevent-" + hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def _event(ident: str, at: int, level: str, message: str, data: Any = None, kind: str = "message") -> dict[str, Any]:
    return {
        "id": ident,
        "object": "fine_tuning.job.event",
        "created_at": at,
        "level": level,
        "message": message,
        "data": data,
        "type": kind,
    }


def _kube_event(obj: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """One Kubernetes Event on the job (the operator posts one per phase change, its reason the phase)."""
    meta = event.get("metadata") or {}
    reason = str(event.get("reason") or "")
    level = "error" if reason == "Failed" else "warn" if event.get("type") == "Warning" else "info"
    at = (
        timestamp(event.get("lastTimestamp"))
        or timestamp(event.get("eventTime"))
        or timestamp(meta.get("creationTimestamp"))
        or created_at(obj)
    )
    message = f"{reason}: {event.get('message') or ''}".strip(": ")
    return _event(_event_id("kube", meta.get("uid") or meta.get("name")), at, level, message, {"phase": reason})


def _progress_event(obj: Mapping[str, Any], uid: str) -> dict[str, Any] | None:
    progress = _status(obj).get("progress") or {}
    step = progress.get("step")
    if not isinstance(step, int):
        return None
    data: dict[str, Any] = {"step": step, "total_steps": progress.get("totalSteps")}
    message = f"Step {step}/{progress.get('totalSteps', '?')}"
    loss = _number(progress.get("loss"))
    if loss is not None:
        data["train_loss"] = loss
        message += f": training loss={loss:.4f}"
    valid = _number(progress.get("validationLoss"))
    if valid is not None and progress.get("validationStep") == step:
        data["valid_loss"] = valid
        message += f", validation loss={valid:.4f}"
    at = timestamp(progress.get("updatedAt")) or created_at(obj)
    return _event(_event_id(uid, "progress", progress.get("run"), step), at, "info", message, data, "metrics")


def _status_events(obj: Mapping[str, Any], has_failed_event: bool, validating_at: int) -> list[dict[str, Any]]:
    """What the status says beyond the phase changes: the data check, the gate, the endpoint, the error. In the
    order they happen (a tie in time keeps this order: `job_events` sorts stably)."""
    uid = str((obj.get("metadata") or {}).get("uid") or job_id(obj))
    status = _status(obj)
    created = created_at(obj)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    events = [_event(_event_id(uid, "created"), created, "info", f"Created fine-tuning job: {job_id(obj)}")]
    validation = status.get("validation") or {}
    if "passed" in validation:
        level = "info" if validation.get("passed") else "error"
        text = validation.get("message") or ("files validated" if validation.get("passed") else "validation failed")
        data = {k: validation.get(k) for k in ("records", "tokens", "schema", "estimatedSteps") if k in validation}
        at = max(created, validating_at)  # the check ran after the Validating phase began
        events.append(_event(_event_id(uid, "validation", validation.get("run")), at, level, text, data))
    progress = _progress_event(obj, uid)
    if progress is not None:
        events.append(progress)
    gate = status.get("gate") or {}
    if "passed" in gate:
        at = timestamp((conditions.get("GatePassed") or {}).get("lastTransitionTime")) or created
        verdict = "passed" if gate.get("passed") else "failed"
        message = f"Evaluation gate {verdict}: {gate.get('summary') or ''}".rstrip(": ")
        data = {"metrics": status.get("metrics"), "results": gate.get("results")}
        events.append(_event(_event_id(uid, "gate", status.get("run")), at, "info" if gate.get("passed") else "error",
                             message, data))  # fmt: skip
    endpoint = status.get("endpoint") or {}
    if endpoint.get("url") and openai_status(obj) == "succeeded":
        at = timestamp((conditions.get("Ready") or {}).get("lastTransitionTime")) or created
        message = f"New fine-tuned model created and served: {fine_tuned_model_name(obj)}"
        events.append(_event(_event_id(uid, "served", endpoint.get("run")), at, "info", message))
    error = status.get("error") or {}
    if error and not has_failed_event:
        at = _finished_at(obj, "failed") or created
        text = f"{error.get('code', 'Error')}: {error.get('message', '')}"
        events.append(_event(_event_id(uid, "error", status.get("run"), error.get("code")), at, "error", text))
    cancelled = _int(_annotations(obj).get(jobs.A_CANCELLED_AT))
    if cancelled is not None:
        events.append(_event(_event_id(uid, "cancelled"), cancelled, "info", "Fine-tuning job cancelled"))
    return events


def _written(event: Mapping[str, Any]) -> tuple[int, int]:
    """The order Events were written in: their time has whole seconds, and several phase changes can share one
    second, so ties go by resourceVersion (etcd's revision, which grows with every write; a value that is not a
    number sorts first)."""
    meta = event.get("metadata") or {}
    version = str(meta.get("resourceVersion") or "")
    at = timestamp(event.get("lastTimestamp")) or timestamp(event.get("eventTime")) or 0
    return at, int(version) if version.isdigit() else -1


def job_events(obj: Mapping[str, Any], kube_events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's `FineTuningJobEvent`s of a job, newest first: the Kubernetes Events on it (each phase change,
    warnings) and what its status holds (created, data check, latest progress, gate, endpoint, error, cancel)."""
    uid = (obj.get("metadata") or {}).get("uid")
    own = [e for e in kube_events if not uid or (e.get("involvedObject") or {}).get("uid") in (None, uid)]
    own = sorted(own, key=_written)
    converted = [_kube_event(obj, event) for event in own]
    has_failed = any(event.get("reason") == "Failed" for event in own)
    validating = [e["created_at"] for e, raw in zip(converted, own, strict=True) if raw.get("reason") == "Validating"]
    timeline = sorted(converted, key=lambda event: event["created_at"])  # stable: the order they were written
    timeline += _status_events(obj, has_failed, max(validating, default=0))
    timeline.sort(key=lambda event: event["created_at"])  # stable: ties keep the order things happen in
    return timeline[::-1]


def job_checkpoints(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OpenAI's `FineTuningJobCheckpoint`s, newest step first: the newest complete checkpoint and the best one by
    validation loss (the one published), as far as `status.progress` names them. The trainer keeps
    `checkpointing.keep` checkpoints in object storage; the status names at most these two."""
    progress = _status(obj).get("progress") or {}
    steps: dict[int, dict[str, Any]] = {}
    last = progress.get("lastCheckpointStep")
    if isinstance(last, int) and last > 0:
        metrics: dict[str, Any] = {"step": float(last)}
        if progress.get("step") == last and _number(progress.get("loss")) is not None:
            metrics["train_loss"] = float(progress["loss"])
        if progress.get("validationStep") == last and _number(progress.get("validationLoss")) is not None:
            metrics["valid_loss"] = float(progress["validationLoss"])
        steps[last] = metrics
    best = progress.get("bestValidationStep")
    if isinstance(best, int) and best > 0 and _number(progress.get("bestValidationLoss")) is not None:
        steps.setdefault(best, {"step": float(best)})["valid_loss"] = float(progress["bestValidationLoss"])
    uid = str((obj.get("metadata") or {}).get("uid") or job_id(obj))
    at = timestamp(progress.get("updatedAt")) or created_at(obj)
    model = fine_tuned_model_name(obj)
    return [
        {
            "id": "ftckpt-" + hashlib.sha256(f"{uid}:{progress.get('run')}:{step}".encode()).hexdigest()[:24],
            "object": "fine_tuning.job.checkpoint",
            "created_at": at,
            "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{step}",
            "fine_tuning_job_id": job_id(obj),
            "metrics": metrics,
            "step_number": step,
        }
        for step, metrics in sorted(steps.items(), reverse=True)
    ]
