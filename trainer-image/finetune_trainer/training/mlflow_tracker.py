"""The run in MLflow (when `tracking.mlflow` is set): one run across the attempts of a FineTuneJob run.

Why our own thin layer over `MlflowClient` instead of transformers' `MLflowCallback`: the run must be the
same MLflow run across attempts of one FineTuneJob run (a preempted pod resumes it: its id is kept in
`run-N/tracking.json`, found again by its tags if that is missing), it must carry the FineTuneJob's identity,
and a tracker that is down must never stop training. So every call goes through `MlflowTracker._safely`: the
first failure is logged as a warning (secrets scrubbed), recorded as `degraded` (reported in the progress and
the termination message, from which the operator sets the TrackingDegraded condition) and turns the tracker
off for the rest of the attempt, so a dead server costs one timeout, not one per step. The client retries
twice with short timeouts (`CLIENT_DEFAULTS`; the pod's environment may override them).

The name mappings (`step_metrics`, `final_metrics`, `params_of`) and `run_url`/`scrub` are pure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from finetune_trainer.config import MlflowTarget, TrainerConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

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


_REFUSED_STATUS = re.compile(r"(?<![:\d])\b40[13]\b")
"""HTTP 401/403 as a number of its own: not the digits inside a port (`127.0.0.1:34015` once read as a 401)."""


def _reason(error: BaseException) -> str:
    """One CamelCase word for the condition: unreachable, refused credentials, or the server said no."""
    text = str(error)
    if _REFUSED_STATUS.search(text) or any(word in text for word in ("Unauthorized", "Forbidden", "PERMISSION_DENIED")):
        return "TrackerUnauthorized"
    if any(
        word in text for word in ("Max retries", "Connection", "connect", "timed out", "Timeout", "resolve", "refused")
    ):
        return "TrackerUnreachable"
    return "TrackerError"
