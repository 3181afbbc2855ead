"""Experiment tracking: the run in MLflow (when `tracking.mlflow` is set) and TensorBoard event files (always).

Why our own thin layer over `MlflowClient` instead of transformers' `MLflowCallback`: the run must be the
same MLflow run across attempts of one FineTuneJob run (a preempted pod resumes it: its id is kept in
`run-N/tracking.json`, found again by its tags if that is missing), it must carry the FineTuneJob's identity,
and a tracker that is down must never stop training. So every call goes through `MlflowTracker._safely`: the
first failure is logged as a warning (secrets scrubbed), recorded as `degraded` (reported in the progress and
the termination message, from which the operator sets the TrackingDegraded condition) and turns the tracker
off for the rest of the attempt, so a dead server costs one timeout, not one per step. The client retries
twice with short timeouts (`CLIENT_DEFAULTS`; the pod's environment may override them).

TensorBoard: transformers' `TensorBoardCallback` with tensorboardX's writer (no tensorboard or TensorFlow in
the image) writes to a local folder that is uploaded to `run-N/tensorboard/` beside every checkpoint upload
and at the end; every attempt writes its own event file there (TensorBoard reads them as one run).

The name mappings (`step_metrics`, `final_metrics`, `params_of`) and `run_url`/`scrub` are pure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from transformers import TrainerCallback

from finetune_trainer.config import MlflowTarget, TrainerConfig
from finetune_trainer.core.errors import Preempted, StorageNotFound
from finetune_trainer.core.storage import S3Uri, Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

RECORD = "tracking.json"
TENSORBOARD = "tensorboard/"
TAG_PREFIX = "finetune.dev/"
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", *SECRET_VARIABLES)
CREDENTIALS_SECRET_VARIABLE = "FTO_MLFLOW_CREDENTIALS_SECRET"
"""The name (never the content) of spec.tracking.mlflow.credentialsSecret, set by the operator, so a Secret
that provides none of CREDENTIAL_VARIABLES is reported by name."""
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
"""MLflow's own defaults retry for minutes; a tracker that is down should cost training seconds."""

# Trainer log keys -> MLflow metric names (gate names where the same quantity is gated on)
_STEP_NAMES = {"loss": "train_loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm", "epoch": "epoch"}


def step_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one Trainer log entry under tracking names: `train_loss`, `learning_rate`, `grad_norm`,
    `epoch`, and `validation_<name>` for an evaluation during training (`eval_loss` -> `validation_loss`)."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key in _STEP_NAMES:
            out[_STEP_NAMES[key]] = float(value)
        elif key.startswith("eval_") and not key.endswith(("_runtime", "_per_second")):
            out["validation_" + key.removeprefix("eval_")] = float(value)
    return out


def final_metrics(metrics: Mapping[str, Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The evaluation's metrics under their gate names (`test_loss`), the base model's as `base_test_loss`."""
    out = {
        f"{split}_{name}": float(value)
        for split, values in metrics.items()
        for name, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    for split, values in base.items():
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"base_{split}_{name}"] = float(value)
    return out


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif value is not None:
        out[prefix] = value if isinstance(value, str) else json.dumps(value)


def params_of(cfg: TrainerConfig, resolved: Mapping[str, Any]) -> dict[str, str]:
    """The run's parameters: base model, dataset URIs and reading, method, hyperparameters (as the resolved
    config says them, camelCase paths such as `hyperparameters.learningRate`), plus `resolved` values the
    trainer decided at run time (precision, processes, total steps)."""
    wire = json.loads(cfg.to_json())
    out: dict[str, str] = {}
    dataset = wire["dataset"]
    for section in ("baseModel", "method", "hyperparameters"):
        _flatten(section, wire[section], out)
    for split in ("train", "validation", "test"):
        if dataset.get(split):
            out[f"dataset.{split}.uri"] = dataset[split]["uri"]
    for key in ("schema", "maxSeqLength", "format", "split"):
        _flatten(f"dataset.{key}", dataset.get(key), out)
    _flatten("", dict(resolved), out)
    return {key[:250]: value[:6000] for key, value in out.items()}


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI served at the tracking URI (any user:password@ in it left out)."""
    parts = urlsplit(tracking_uri.rstrip("/"))
    netloc = parts.netloc.rpartition("@")[2]
    base = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


_USERINFO = re.compile(r"(https?://)[^/@\s]+@")


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` without the tracking credentials: the values of SECRET_VARIABLES and user:password@ in URLs."""
    environ = os.environ if environ is None else environ
    for name in SECRET_VARIABLES:
        secret = environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return _USERINFO.sub(r"\1***@", text)


def _short(error: BaseException, environ: Mapping[str, str] | None = None) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return scrub(f"{type(error).__name__}: {text}"[:600], environ)


class MlflowTracker:
    """One FineTuneJob run as one MLflow run; never raises, degrades instead (module docstring says why).

    `client` is an `mlflow.MlflowClient` (made from the target when None).
    """

    def __init__(self, target: MlflowTarget, cfg: TrainerConfig, client: Any = None) -> None:
        self.target = target
        self.cfg = cfg
        self.client = client
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self.degraded: dict[str, str] | None = None
        self.logged_params: dict[str, str] = {}  # what an earlier attempt of this run logged

    @property
    def active(self) -> bool:
        return self.run_id is not None and self.degraded is None

    def _degrade(self, reason: str, message: str) -> None:
        if self.degraded is None:
            self.degraded = {"reason": reason, "message": message[:1000]}
            log.warning("MLflow tracking degraded (%s): %s; training goes on without it", reason, message)

    def _safely(self, what: str, call: Callable[[], T]) -> T | None:
        if self.degraded is not None:
            return None
        try:
            return call()
        except Exception as error:
            self._degrade(_reason(error), f"{what} at {scrub(self.target.tracking_uri)}: {_short(error)}")
            return None

    def tags(self) -> dict[str, str]:
        job = self.cfg.job
        return {
            f"{TAG_PREFIX}namespace": job.namespace,
            f"{TAG_PREFIX}name": job.name,
            f"{TAG_PREFIX}run": str(job.run),
            f"{TAG_PREFIX}uid": job.uid,
            "mlflow.runName": f"{job.name}-run-{job.run}",
        }

    def start(self, recorded_run_id: str | None) -> None:
        """Continue `recorded_run_id` (an earlier attempt's) or the run tagged with this job's uid and run
        number, else create one in the experiment (created when missing)."""
        missing = [name for name in CREDENTIAL_VARIABLES if not os.environ.get(name)]
        secret = os.environ.get(CREDENTIALS_SECRET_VARIABLE)
        if secret and len(missing) == len(CREDENTIAL_VARIABLES):
            log.warning(
                "tracking.mlflow.credentialsSecret %r gave none of %s (a missing Secret or keys)",
                secret,
                ", ".join(CREDENTIAL_VARIABLES),
            )
        for name, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self._safely("connecting", self._connect)
        self._safely("starting the run", lambda: self._open(recorded_run_id))
        if self.degraded is None and self.run_id is not None:
            log.info("MLflow run %s (%s): %s", self.run_id, "continued" if self.resumed else "new", self.url)

    def _connect(self) -> None:
        if self.client is None:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.target.tracking_uri)

    def _open(self, recorded_run_id: str | None) -> None:
        client, name = self.client, self.target.experiment
        experiment = client.get_experiment_by_name(name)
        self.experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run_id = recorded_run_id or self._tagged_run()
        run = self._existing(run_id) if run_id else None
        if run is not None and run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active":
            self.run_id, self.resumed = run.info.run_id, True
            self.logged_params = dict(run.data.params)
            client.update_run(self.run_id, status="RUNNING")
            return
        run = client.create_run(self.experiment_id, tags=self.tags(), run_name=self.tags()["mlflow.runName"])
        self.run_id = run.info.run_id

    def _existing(self, run_id: str) -> Any:
        """The run `run_id`, or None when the server no longer has it (deleted for good: a new run is made)."""
        try:
            return self.client.get_run(run_id)
        except Exception as error:
            if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                log.info("MLflow run %s of an earlier attempt is gone; starting a new one", run_id)
                return None
            raise

    def _tagged_run(self) -> str | None:
        job = self.cfg.job
        if not job.uid:
            return None
        query = f"tags.`{TAG_PREFIX}uid` = '{job.uid}' and tags.`{TAG_PREFIX}run` = '{job.run}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return found[0].info.run_id if found else None

    @property
    def url(self) -> str | None:
        if self.run_id is None or self.experiment_id is None:
            return None
        return run_url(self.target.tracking_uri, self.experiment_id, self.run_id)

    def log_params(self, params: Mapping[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        # MLflow refuses to change a logged parameter: a continued run keeps the first attempt's values (an
        # attempt on another GPU type may choose another batchSize: auto), said in the log
        changed = {k: v for k, v in params.items() if k in self.logged_params and self.logged_params[k] != v}
        if changed:
            log.info("parameters of this attempt that differ from the MLflow run's (kept as logged): %s", changed)
        items = [Param(key, value) for key, value in params.items() if key not in self.logged_params]
        for start in range(0, len(items), 100):  # the server takes at most 100 params per batch
            batch = items[start : start + 100]
            self._safely("logging parameters", partial(self.client.log_batch, self.run_id, params=batch))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step) for key, value in metrics.items()]
        self._safely("logging metrics", lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, name: str, data: bytes) -> None:
        """Upload `data` as the artifact `name` (through the tracking server's artifact proxy, as a rule)."""
        if not self.active:
            return
        with tempfile.TemporaryDirectory(prefix="fto-mlflow-") as folder:
            path = Path(folder) / name
            path.write_bytes(data)
            self._safely(f"uploading {name}", lambda: self.client.log_artifact(self.run_id, str(path)))

    def finish(self, status: str) -> None:
        """FINISHED, FAILED or KILLED (preempted: the next attempt sets it RUNNING again)."""
        if self.active:
            self._safely("ending the run", lambda: self.client.set_terminated(self.run_id, status=status))

    def summary(self) -> dict[str, Any]:
        """What the status shows: `{mlflow: {runId, experimentId, url}, degraded: {reason, message}}`."""
        out: dict[str, Any] = {}
        if self.run_id is not None:
            out["mlflow"] = {"runId": self.run_id, "experimentId": self.experiment_id, "url": self.url}
        if self.degraded is not None:
            out["degraded"] = dict(self.degraded)
        return out


def _reason(error: BaseException) -> str:
    """One CamelCase word for the condition: unreachable, refused credentials, or the server said no."""
    text = str(error)
    if any(code in text for code in ("401", "403", "Unauthorized", "Forbidden", "PERMISSION_DENIED")):
        return "TrackerUnauthorized"
    if any(
        word in text for word in ("Max retries", "Connection", "connect", "timed out", "Timeout", "resolve", "refused")
    ):
        return "TrackerUnreachable"
    return "TrackerError"


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
