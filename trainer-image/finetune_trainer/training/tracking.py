"""Experiment tracking: the run in MLflow (when `tracking.mlflow` is set) and TensorBoard event files (always).

What `train` drives (`RunTracking`, rank 0): the MLflow run (`mlflow_tracker`, which says why it is
our own thin layer), its id recorded in `run-N/tracking.json` for the next attempt, the TensorBoard callback and
its uploads.

TensorBoard: transformers' `TensorBoardCallback` with tensorboardX's writer (no tensorboard or TensorFlow in
the image) writes to a local folder that is uploaded to `run-N/tensorboard/` beside every checkpoint upload
and at the end; every attempt writes its own event file there (TensorBoard reads them as one run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core.errors import Preempted, StorageNotFound
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage
from finetune_trainer.training.mlflow_tracker import MlflowTracker, final_metrics, params_of, step_metrics

log = logging.getLogger(__name__)

RECORD = "tracking.json"
TENSORBOARD = "tensorboard/"


def read_record(storage: Storage, run_uri: S3Uri) -> dict[str, Any]:
    """`run-N/tracking.json` of an earlier attempt ({} when there is none or it is unreadable)."""
    try:
        data = json.loads(storage.read_bytes(run_uri.join(RECORD)))
    except (StorageNotFound, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(storage: Storage, run_uri: S3Uri, summary: Mapping[str, Any]) -> None:
    storage.write_bytes(run_uri.join(RECORD), json.dumps(summary, indent=2).encode(), "application/json")


def tensorboard_callback(folder: Path) -> Any:
    """transformers' TensorBoardCallback writing through tensorboardX into `folder`."""
    from tensorboardX import SummaryWriter
    from transformers.integrations.integration_utils import TensorBoardCallback

    folder.mkdir(parents=True, exist_ok=True)
    callback = TensorBoardCallback(tb_writer=SummaryWriter(logdir=str(folder)))  # type: ignore[no-untyped-call]
    callback.logging_dir = str(folder)  # a writer it re-creates (after on_train_end) writes here too
    return callback


class TensorBoardUpload:
    """Copies the local event files to `run-N/tensorboard/`; a failure is a warning (they are a by-product)."""

    def __init__(self, storage: Storage, folder: Path, target: S3Uri) -> None:
        self.storage, self.folder, self.target = storage, folder, target

    def __call__(self) -> None:
        try:
            if self.folder.exists():
                self.storage.upload_dir(self.folder, self.target)
        except Exception as error:
            log.warning("uploading the TensorBoard event files to %s failed: %s", self.target, error)


class TrackingCallback(TrainerCallback):  # type: ignore[misc]
    """Sends every Trainer log entry's numbers to MLflow at the step they belong to (rank 0 only)."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and state.is_world_process_zero:
            self.tracker.log_metrics(step_metrics(logs), state.global_step)


def memory_plan_here(cfg: TrainerConfig, model_folder: Path, train: Any, labels: list[str] | None, cuda: bool) -> Any:
    """The memory plan (docs/memory.md) of this run on the device it trains on, as the status shows plans
    (`to_status()`); None, with a warning, when it cannot be made (an architecture the plan does not know)."""
    try:
        from finetune_trainer.memory.check import runtime_device
        from finetune_trainer.memory.plan import plan, setup_of

        config = json.loads((model_folder / "config.json").read_text())
        # the device as the trainer's own batch decision saw it (memory.check.runtime_device), so both plans agree
        device = runtime_device(cuda, cfg.distributed.processes_per_worker, dict(os.environ))
        longest = max((len(ids) for ids in train["input_ids"]), default=1)
        setup = setup_of(cfg, longest_record=longest)
        return plan(config, setup, device, num_labels=len(labels) if labels else None).to_status()
    except Exception as error:
        log.warning("no memory plan for tracking: %s", error)
        return None


class RunTracking:
    """What `train.main` does for tracking on rank 0: the MLflow run (when configured), the TensorBoard
    callback and its uploads, the record of the run id in `run-N/tracking.json`."""

    def __init__(self, cfg: TrainerConfig, storage: Storage, run_uri: S3Uri, work: Path) -> None:
        self.cfg = cfg
        self.storage = storage
        self.run_uri = run_uri
        self.tensorboard_folder = work / "tensorboard"
        self.upload_tensorboard = TensorBoardUpload(Storage(), self.tensorboard_folder, run_uri.join(TENSORBOARD))
        target = cfg.tracking.mlflow
        self.mlflow = MlflowTracker(target, cfg) if target is not None else None

    def start(self) -> None:
        """Open (or continue) the MLflow run and record its id for the next attempt of this run."""
        if self.mlflow is None:
            return
        recorded = (read_record(self.storage, self.run_uri).get("mlflow") or {}).get("runId")
        self.mlflow.start(recorded)
        if self.mlflow.run_id is not None and self.mlflow.run_id != recorded:
            write_record(self.storage, self.run_uri, self.mlflow.summary())

    def callbacks(self) -> list[Any]:
        callbacks = [tensorboard_callback(self.tensorboard_folder)]
        if self.mlflow is not None:
            callbacks.append(TrackingCallback(self.mlflow))
        return callbacks

    def log_start(self, resolved: Mapping[str, Any], memory_plan: Mapping[str, Any] | None) -> None:
        if self.mlflow is None:
            return
        self.mlflow.log_params(params_of(self.cfg, resolved))
        if memory_plan is not None:
            self.mlflow.log_artifact("memory_plan.json", json.dumps(memory_plan, indent=2).encode())

    def log_artifact(self, name: str, data: bytes) -> None:
        if self.mlflow is not None:
            self.mlflow.log_artifact(name, data)

    def log_end(self, metrics: Mapping[str, Any], base: Mapping[str, Any], step: int) -> None:
        """The evaluation's metrics at the last step: to MLflow, and as `eval/<split>_<name>` to TensorBoard."""
        final = final_metrics(metrics, base)
        try:
            from tensorboardX import SummaryWriter

            with SummaryWriter(logdir=str(self.tensorboard_folder), filename_suffix=".evaluation") as writer:
                for name, value in final.items():
                    writer.add_scalar(f"eval/{name}", value, step)
        except Exception as error:
            log.warning("writing the evaluation to TensorBoard failed: %s", error)
        self.upload_tensorboard()
        if self.mlflow is not None:
            self.mlflow.log_metrics(final, step)

    def finish(self, status: str) -> None:
        self.upload_tensorboard()
        if self.mlflow is not None:
            self.mlflow.finish(status)

    def summary(self) -> dict[str, Any]:
        """`{mlflow?, degraded?, tensorboard}` for the progress report and the termination message."""
        out = self.mlflow.summary() if self.mlflow is not None else {}
        out["tensorboard"] = str(self.run_uri.join(TENSORBOARD))
        return out


@contextlib.contextmanager
def tracking_finished_on_error(tracking: RunTracking | None) -> Iterator[None]:
    """On the way out with an exception, end the MLflow run: KILLED when preempted (the next attempt sets it
    RUNNING again), FAILED otherwise; the TensorBoard files so far are uploaded either way."""
    try:
        yield
    except BaseException as leaving:
        if tracking is not None:
            from finetune_trainer.training.callbacks import StopRequested

            tracking.finish("KILLED" if isinstance(leaving, Preempted | StopRequested) else "FAILED")
        raise
