"""The run's experiment tracking as the status shows it (`status.tracking`) and its TrackingDegraded condition.

Why the operator copies it instead of letting the trainer write `status.tracking` itself: the status is the
operator's alone (it rewrites every field on each pass), and the trainer tells it in the two places it already
reads: its progress report (`progress.tracking`, checked by finetunejob/progress.py) while the run is going, the
termination message's `tracking` when it ends (docs/trainer-contract.md sections 3 and 4). Only what the status
should show is copied (ids, URL, the degradation's reason and message, which the trainer has already cleared of
credentials). Pure.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api import conditions as cond

TRACKING_DEGRADED = "TrackingDegraded"


def _strings(source: Any, keys: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(source, dict):
        return {}
    return {key: str(source[key])[:2048] for key in keys if isinstance(source.get(key), str | int) and source[key]}


def tracking_of(
    run: int, reported: dict[str, Any], progress: dict[str, Any], previous: dict[str, Any]
) -> dict[str, Any] | None:
    """`status.tracking` of run `run`: from its termination message (`reported`), else its live progress,
    else what the status already said about this run (`previous`); None when nothing was reported."""
    if reported:
        source = reported
    elif progress.get("run") == run and isinstance(progress.get("tracking"), dict):
        source = progress["tracking"]
    elif previous.get("run") == run:
        source = previous
    else:
        return None
    mlflow = _strings(source.get("mlflow"), ("runId", "experimentId", "url"))
    degraded = _strings(source.get("degraded"), ("reason", "message"))
    if not mlflow and not degraded:
        return None
    out: dict[str, Any] = {"run": run}
    if mlflow:
        out["mlflow"] = mlflow
    if degraded:
        out["degraded"] = degraded
    return out


def degraded_condition(configured: bool, tracking: dict[str, Any] | None, generation: int) -> cond.Condition | None:
    """TrackingDegraded: True while the run's tracker failed (training goes on), False once its MLflow run is
    open or before it is; absent when the spec asks for no tracking."""
    if not configured:
        return None
    degraded = (tracking or {}).get("degraded")
    if degraded:
        reason = degraded.get("reason") or "TrackerError"
        message = f"MLflow tracking failed; training goes on without it: {degraded.get('message', '')}"
        return cond.condition(TRACKING_DEGRADED, True, reason, message, generation)
    mlflow = (tracking or {}).get("mlflow")
    if mlflow:
        message = f"MLflow run {mlflow.get('runId')}: {mlflow.get('url')}"
        return cond.condition(TRACKING_DEGRADED, False, "Tracking", message, generation)
    return cond.condition(
        TRACKING_DEGRADED, False, "NotStarted", "the run has not opened its MLflow run yet", generation
    )


def degraded_news(previous: dict[str, Any], tracking: dict[str, Any] | None) -> str | None:
    """The Warning event's message when this pass is the first to see the run's tracking degraded."""
    degraded = (tracking or {}).get("degraded")
    if not tracking or not degraded:
        return None
    if previous.get("run") == tracking["run"] and previous.get("degraded"):
        return None
    return (
        f"run {tracking['run']}: MLflow tracking degraded ({degraded.get('reason')}): {degraded.get('message', '')}; "
        "training goes on"
    )
