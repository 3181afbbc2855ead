"""The trainer's live progress, read from its progress ConfigMap and checked before status shows it.

Why a ConfigMap the operator reads instead of the trainer patching `status.progress` itself: a status the
trainer may patch is a status the trainer may forge (its token is in the pod, and any editor of the namespace
can run a pod as its ServiceAccount), and `status.published` beside `progress` decides what is served. Now
the trainer may patch only `<job>-progress` (its Role names that one object), the operator owns it (controller
ownerReference to the FineTuneJob), and only what this module lets through reaches `status.progress`: known
keys, finite bounded numbers, short strings, one run. A forged progress can at most show a wrong number; the
gate, publishing and serving never read it (docs/trainer-contract.md section 4). Pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from finetune_operator.builders.rbac import PROGRESS_KEY

MAX_DOCUMENT_BYTES = 16 * 1024
"""A report is a few hundred bytes; anything much larger is not the trainer's and is not parsed."""
MAX_COUNT = 10**12
MAX_NUMBER = 1e12
MAX_TEXT = 256
MAX_MESSAGE = 1024
STAGES = ("loading", "training", "evaluating", "uploading")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _count(value: Any) -> int | None:
    """A step count: an integer in [0, 10^12] (bool is not one)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def _number(value: Any) -> float | int | None:
    """A finite number within +-10^12."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value if abs(value) <= MAX_NUMBER else None
    return None


def _percent(value: Any) -> int | None:
    count = _count(value)
    return count if count is not None and count <= 100 else None


def _stage(value: Any) -> str | None:
    return value if value in STAGES else None


def _time(value: Any) -> str | None:
    return value if isinstance(value, str) and _TIME.match(value) else None


def _true(value: Any) -> bool | None:
    return True if value is True else None


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= limit else None


def _fields(source: Any, checks: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    if not isinstance(source, dict):
        return {}
    checked = {key: check(source.get(key)) for key, check in checks.items()}
    return {key: value for key, value in checked.items() if value is not None}


FIELDS: dict[str, Callable[[Any], Any]] = {
    "stage": _stage,
    "step": _count,
    "totalSteps": _count,
    "epoch": _number,
    "percent": _percent,
    "loss": _number,
    "learningRate": _number,
    "tokensPerSecond": _number,
    "estimatedFinishTime": _time,
    "lastCheckpointStep": _count,
    "validationLoss": _number,
    "validationStep": _count,
    "bestValidationLoss": _number,
    "bestValidationStep": _count,
    "earlyStopped": _true,
    "updatedAt": _time,
}
"""Every key `status.progress` may hold besides `run` and `tracking` (the CRD's list), and its check."""


def _tracking(source: Any) -> dict[str, Any]:
    """`tracking`: the MLflow run's ids and page, a degradation's reason and message, the TensorBoard folder."""
    if not isinstance(source, dict):
        return {}
    out: dict[str, Any] = {}
    mlflow = _fields(source.get("mlflow"), {"runId": _text, "experimentId": _text, "url": _text})
    degraded = _fields(source.get("degraded"), {"reason": _text, "message": lambda v: _text(v, MAX_MESSAGE)})
    tensorboard = _text(source.get("tensorboard"), MAX_MESSAGE)
    if mlflow:
        out["mlflow"] = mlflow
    if degraded:
        out["degraded"] = degraded
    if tensorboard:
        out["tensorboard"] = tensorboard
    return out


def validated(raw: Any) -> dict[str, Any] | None:
    """The shown part of one progress document: None unless it names a run (a positive integer); every other
    key that is unknown or fails its check is dropped, alone."""
    if not isinstance(raw, dict):
        return None
    run = _count(raw.get("run"))
    if not run:
        return None
    out: dict[str, Any] = {"run": run, **_fields(raw, FIELDS)}
    tracking = _tracking(raw.get("tracking"))
    if tracking:
        out["tracking"] = tracking
    return out


def report_in(config_map: dict[str, Any] | None, owner_uid: str) -> dict[str, Any] | None:
    """The trainer's report in its progress ConfigMap (`data["progress.json"]`), validated; None when there is
    none, it does not parse, it is too large, or the ConfigMap is not the one the operator made for this
    FineTuneJob (its controller ownerReference names another uid, or none)."""
    if not config_map:
        return None
    references = (config_map.get("metadata") or {}).get("ownerReferences") or []
    if not any(r.get("controller") and r.get("uid") == owner_uid for r in references):
        return None
    text = (config_map.get("data") or {}).get(PROGRESS_KEY)
    if not isinstance(text, str) or not text or len(text.encode()) > MAX_DOCUMENT_BYTES:
        return None
    try:
        return validated(json.loads(text))
    except (ValueError, RecursionError):  # json.loads accepts NaN and Infinity: _number refuses them
        return None


def progress_of(run: int, report: dict[str, Any] | None, previous: Any) -> dict[str, Any] | None:
    """`status.progress` after this pass: the trainer's report when it is about run `run`, else what the status
    showed before (checked again, since anyone who may write the status could have written it)."""
    if report is not None and report["run"] == run:
        return report
    return validated(previous)
