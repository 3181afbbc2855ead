"""The Validating phase: has run N's data been checked, and what is the check's Job doing. Pure.

Why before training: a dataset with a malformed line, a missing column or test records inside the train files
fails the same way on a CPU as on eight GPUs, so the run's first Job is a CPU-only `finetune_trainer validate`
(builders.training.validation_job). Only once it has passed is the training Job, with its GPU request, created;
a user error (exit 42) ends the run in Validating, naming the file and the line, with no GPU ever asked for.

A passed check is recorded in status.validation with the hash of the spec fields it read
(`spec.validation_spec_hash`): a later run with the same inputs (a new learning rate, more epochs) does not
check again. A failed check is never reused: after fixing the data in place, the `finetune.dev/retry`
annotation runs it again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.core.observed import JobObs, PodObs, parse_termination_message
from finetune_operator.finetunejob.training_state import TrainingState, training_state

SUMMARY_FIELDS = (
    "schema",
    "schemaDetected",
    "schemaReason",
    "records",
    "tokens",
    "truncated",
    "droppedNoTarget",
    "maxSeqLength",
    "overlapWithTrain",
    "nearOverlapWithTrain",
    "splitSources",
    "splitRule",
    "excludedFromTrain",
    "estimatedSteps",
    "memoryPlan",
    "sources",
    "diskPlan",
)
"""What of `validate`'s summary goes into status.validation (file lists and labels stay in the pod's log)."""


COMMIT = re.compile(r"[0-9a-f]{40}")
"""A git commit hash as the hub resolves a revision to: anything else in a status is not used."""


def recorded_commits(record: dict[str, Any] | None) -> dict[str, str]:
    """field -> commit of each hf:// source a passed validation resolved (its `sources`, core/hub.py's summary).
    A commit that is not a full hash is left out: the status can be written by the job's tenant, and the commit
    becomes a path under the run's cache."""
    if not record or not record.get("passed"):
        return {}
    out: dict[str, str] = {}
    for source in record.get("sources") or []:
        if isinstance(source, dict) and "field" in source and COMMIT.fullmatch(str(source.get("commit") or "")):
            out[str(source["field"])] = str(source["commit"])
    return out


def cached_base_model_uri(spec: FineTuneJobSpec, record: dict[str, Any] | None) -> str | None:
    """The object-storage copy of an hf:// base model at the commit a passed validation resolved, or None.
    Derived from the job's own output.uri and the hub URI, where the trainer copies it
    (`<output.uri>hub-cache/models/<org>/<name>/<commit>/`, training/hub_sources.py), never taken from the
    status's `cachedUri`: a status pointing elsewhere would have the server load another folder as the base."""
    commit = recorded_commits(record).get("baseModel.uri")
    if commit is None or not spec.base_model.from_hub:
        return None
    repo = spec.base_model.uri.removeprefix("hf://").strip("/")
    base = spec.output.uri if spec.output.uri.endswith("/") else spec.output.uri + "/"
    return f"{base}hub-cache/models/{repo}/{commit}/"


CHECKING = "checking the data, its format and the tokenizer before any GPU is asked for"


@dataclass(frozen=True)
class Validation:
    """`passed`: training may start. `state`: what to report while it may not. `record`: status.validation."""

    passed: bool
    state: TrainingState | None
    record: dict[str, Any] | None


def _passed_record(key: str, run: int, pods: Sequence[PodObs]) -> dict[str, Any]:
    done = sorted((p for p in pods if p.phase == "Succeeded" and p.termination_message), key=lambda p: p.created)
    report = parse_termination_message(done[-1].termination_message) if done else None
    summary = {k: v for k, v in (report.summary if report else {}).items() if k in SUMMARY_FIELDS}
    message = report.message if report and report.message else "the data and tokenizer checks passed"
    return {"key": key, "run": run, "passed": True, "message": message, **summary}


def validation_of(
    status: dict[str, Any],
    key: str,
    run: int,
    job: JobObs | None,
    pods: Sequence[PodObs],
    *,
    suspend: bool,
    kueue: bool,
) -> Validation:
    """Whether run `run` may train, from status (a check passed for the same inputs) and its validation Job."""
    recorded = status.get("validation") or {}
    if recorded.get("passed") and recorded.get("key") == key:
        return Validation(True, None, recorded)
    checking = TrainingState("Validating", "Validating", CHECKING)
    succeeded = any(p.phase == "Succeeded" and p.exit_code == 0 for p in pods)
    if succeeded or (job is not None and job.complete and not pods):
        return Validation(True, None, _passed_record(key, run, pods))
    # A Job's end can be seen before its pod's: the pod's termination message (the summary, or the error that
    # names the file and the line) is one watch event away, and a pass now would record the outcome without it.
    if job is not None and job.complete:
        return Validation(False, checking, None)
    if job is not None and job.failed_condition and pods and not any(p.phase == "Failed" for p in pods):
        return Validation(False, checking, None)
    state = training_state(job, pods, suspend=suspend, kueue=kueue, progress={}, run=run)
    if state.phase in ("Training", "Evaluating"):
        return Validation(False, TrainingState("Validating", "Validating", CHECKING, attempts=state.attempts), None)
    if state.phase == "Failed" and state.error is not None:
        failed = {"key": key, "run": run, "passed": False, "message": state.error.message}
        return Validation(False, state, failed)
    words = state.message.replace("training Job", "validation Job").replace("training pods", "validation pod")
    return Validation(False, TrainingState(state.phase, state.reason, f"validation: {words}", state.error), None)
