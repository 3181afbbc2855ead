"""A succeeded job's result file, as OpenAI gives one: `step_metrics.csv`, purpose `fine-tune-results`, one row a
step with its training and validation metrics, read with `client.files.retrieve` / `client.files.content`.

Why derived, not stored: the trainer already writes the run's whole Trainer log (`history`) into
`run-N/metrics.json` under the job's output (training/artifacts.py), so the CSV is built from it on each read and
nothing is written beside it (no second object to keep in step, nothing in the service's memory). The id names
the job and the run (`file-results-<job id>-run-<N>`), so it is stable across requests and replicas and needs
no index. Where it is read from is never taken from the status: the folder is the one the API gave the job
(`s3://<bucket>/<namespace>/jobs/<job id>/`, which its spec.output.uri must still be), and the run is the id's.

Pure: ids, keys and the CSV; the routes read the job and the object as the caller.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from finetune_trainer.finetuning_api import file_store

JOBS_FOLDER = "jobs"
"""A job's outputs go under `s3://<bucket>/<namespace>/jobs/<job id>/` (beside the namespace's `files/`)."""
PURPOSE = "fine-tune-results"
FILENAME = "step_metrics.csv"
RESULT_FILE_ID = re.compile(r"^file-results-(?P<job>ftjob-[a-z2-7]{20})-run-(?P<run>[1-9][0-9]{0,5})$")
COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
"""OpenAI's columns. Empty where the run did not measure a value at that step (validation runs every
`evaluation.intervalSteps`; token accuracy is logged only where the Trainer reports it)."""
SOURCES = {
    "train_loss": "loss",
    "train_accuracy": "mean_token_accuracy",
    "valid_loss": "eval_loss",
    "valid_mean_token_accuracy": "eval_mean_token_accuracy",
}
"""Each column from the Trainer's log_history key."""


def result_file_id(job_id: str, run: int) -> str:
    return f"file-results-{job_id}-run-{run}"


def parse_result_file_id(file_id: str) -> tuple[str, int] | None:
    """(job id, run) of a result file id, or None when `file_id` is not one."""
    match = RESULT_FILE_ID.match(file_id or "")
    return (match["job"], int(match["run"])) if match else None


def is_result_file_id(file_id: str) -> bool:
    return parse_result_file_id(file_id) is not None


def job_folder(namespace: str, job_id: str) -> str:
    """The key prefix the API gives a job's outputs in its bucket (`<namespace>/jobs/<job id>/`: routes_jobs)."""
    return f"{file_store.check_namespace(namespace)}/{JOBS_FOLDER}/{job_id}/"


def metrics_key(namespace: str, job_id: str, run: int) -> str:
    """The key of run `run`'s metrics.json (training/artifacts.py writes it under `run-N/`)."""
    return f"{job_folder(namespace, job_id)}run-{int(run)}/metrics.json"


def offered_run(obj: Mapping[str, Any], bucket: str | None = None) -> int | None:
    """The run whose result file a job offers: the run its status reports, when it is a positive integer and the
    job's outputs are still where the API put them, `s3://<bucket>/<namespace>/jobs/<job id>/` (any bucket when
    `bucket` is None: the view does not know the service's; the files routes do). A spec.output.uri edited to
    another place is not followed. Only a number comes from the status, never a path."""
    meta = obj.get("metadata") or {}
    namespace, job_id = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    uri = str(((obj.get("spec") or {}).get("output") or {}).get("uri") or "")
    run = (obj.get("status") or {}).get("run")
    if isinstance(run, bool) or not isinstance(run, int) or not 1 <= run <= 999_999:
        return None
    try:
        folder = job_folder(namespace, job_id)
    except file_store.BadName:
        return None
    parts = uri.split("/", 3)
    if not uri.startswith("s3://") or parts[3:] != [folder] or (bucket is not None and parts[2] != bucket):
        return None
    return run


def _cell(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def step_rows(history: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row a step that has any of the columns' metrics, in step order (a step logged twice, training then
    validation, is one row)."""
    rows: dict[int, dict[str, str]] = {}
    for entry in history:
        step = entry.get("step") if isinstance(entry, Mapping) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            continue
        cells = {column: _cell(entry.get(key)) for column, key in SOURCES.items()}
        if not any(cells.values()):
            continue  # the Trainer's final summary (train_runtime, ...) and other entries without these metrics
        row = rows.setdefault(step, {"step": str(step), **{column: "" for column in SOURCES}})
        row.update({column: cell for column, cell in cells.items() if cell})
    return [rows[step] for step in sorted(rows)]


def step_metrics_csv(document: object) -> bytes:
    """`step_metrics.csv` of a run's metrics.json (its `history`); a document without one has a header only."""
    history = document.get("history") if isinstance(document, Mapping) else None
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(step_rows(history if isinstance(history, list) else []))
    return out.getvalue().encode()
