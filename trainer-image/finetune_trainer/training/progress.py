"""Progress reports: the run's progress ConfigMap through the in-cluster API, or the log.

Why a ConfigMap and not the FineTuneJob's status: the operator alone writes the status (it decides what is
published there); the trainer's ServiceAccount may patch only the ConfigMap named in `FTO_PROGRESS_CONFIGMAP`,
and the operator copies what it accepts of the report into `status.progress` (docs/trainer-contract.md section 4).
Why throttled: a patch per optimizer step would hammer the API server on fast tiny models, and a silent
minute looks like a hang on slow large ones. `Throttle` (pure, unit-tested) sends at most every
`min_interval` seconds and at least every `max_interval` while there is news; stage changes always go
out at once. `progress_payload` builds the contract's shape (docs/trainer-contract.md section 4).
Only rank 0 reports. A failed patch is logged and never stops training.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
CONFIG_MAP_ENV = "FTO_PROGRESS_CONFIGMAP"  # the ConfigMap the operator made for this FineTuneJob's progress
PROGRESS_KEY = "progress.json"


@dataclass
class Throttle:
    """Decides when a report is due: not before `min_interval`, not later than `max_interval`."""

    min_interval: float = 5.0
    max_interval: float = 30.0
    last_sent: float | None = None
    pending: bool = False

    def offer(self, now: float, force: bool = False) -> bool:
        """Record news at `now`; True when it should be sent now (then it counts as sent)."""
        self.pending = True
        if force or self.last_sent is None or now - self.last_sent >= self.min_interval:
            self.last_sent, self.pending = now, False
            return True
        return False

    def overdue(self, now: float) -> bool:
        """True when unsent news is older than `max_interval` (a timer can flush it)."""
        return self.pending and self.last_sent is not None and now - self.last_sent >= self.max_interval


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def progress_payload(
    run: int,
    stage: str,
    now: float,
    step: int | None = None,
    total: int | None = None,
    epoch: float | None = None,
    loss: float | None = None,
    learning_rate: float | None = None,
    tokens_per_second: float | None = None,
    seconds_per_step: float | None = None,
    last_checkpoint: int | None = None,
) -> dict[str, Any]:
    """The merge patch for `status.progress`; absent numbers are left out."""
    progress: dict[str, Any] = {"run": run, "stage": stage, "updatedAt": iso(now)}
    if step is not None:
        progress["step"] = step
    if total:
        progress["totalSteps"] = total
        if step is not None:
            progress["percent"] = min(100, int(100 * step / total))
            # null deletes a stale estimate from an earlier patch (merge-patch semantics)
            remaining = (total - step) * seconds_per_step if seconds_per_step and step < total else None
            progress["estimatedFinishTime"] = iso(now + remaining) if remaining is not None else None
    if epoch is not None:
        progress["epoch"] = round(epoch, 3)
    if loss is not None:
        progress["loss"] = round(loss, 5)
    if learning_rate is not None:
        progress["learningRate"] = float(f"{learning_rate:.4g}")
    if tokens_per_second is not None:
        progress["tokensPerSecond"] = int(tokens_per_second)
    if last_checkpoint is not None:
        progress["lastCheckpointStep"] = last_checkpoint
    return {"status": {"progress": progress}}


def in_cluster() -> bool:
    return TOKEN_PATH.exists() and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def merged(document: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`document` with a report's fields applied as a JSON merge patch (RFC 7386): None removes a field,
    a dict merges into a dict. The ConfigMap holds the whole document, so the merge happens here. A number
    that is not finite (a diverged loss) removes its field too: JSON has no NaN, and the operator refuses it."""
    out = dict(document)
    for key, value in patch.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def config_map_sink(namespace: str, name: str, api_client: Any = None) -> Callable[[dict[str, Any]], None]:
    """A function that writes the progress so far into the ConfigMap `name` (as the pod, by default); each
    report is merged into the document the earlier ones built, so fields a report leaves out stay."""
    from kubernetes import client, config

    if api_client is None:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    api = client.CoreV1Api(api_client)
    document: dict[str, Any] = {}

    def send(patch: dict[str, Any]) -> None:
        nonlocal document
        document = merged(document, patch["status"]["progress"])
        text = json.dumps(document, sort_keys=True, allow_nan=False)
        api.patch_namespaced_config_map(name, namespace, {"data": {PROGRESS_KEY: text}})

    return send


def log_sink(patch: dict[str, Any]) -> None:
    log.info("progress %s", json.dumps(patch["status"]["progress"], sort_keys=True))


@dataclass
class Reporter:
    """Sends progress through a sink (the API or the log), throttled; never raises."""

    run: int
    sink: Callable[[dict[str, Any]], None]
    throttle: Throttle = field(default_factory=Throttle)
    clock: Callable[[], float] = field(default=time.time)
    latest: dict[str, Any] | None = None
    failures: int = 0
    stage: str | None = None
    tracking: Callable[[], dict[str, Any]] | None = None
    """The run's tracking (`tracking.RunTracking.summary`), sent as `progress.tracking` with every report;
    a change (the MLflow run opened, or tracking degraded) goes out at once."""
    tracking_sent: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields another module owns (`selection`: validationLoss, bestValidationLoss ...), sent with every report;
    a change goes out at once. None is sent as null, which deletes a value an earlier run left (merge patch)."""
    extra_sent: dict[str, Any] | None = None

    def report(self, stage: str, force: bool = False, **values: Any) -> None:
        now = self.clock()
        self.latest = progress_payload(self.run, stage, now, **values)
        if self.tracking is not None:
            current = self.tracking()
            if current:
                self.latest["status"]["progress"]["tracking"] = current
            if current != self.tracking_sent:
                force, self.tracking_sent = True, current
        if self.extra:
            self.latest["status"]["progress"].update(self.extra)
            if self.extra != self.extra_sent:
                force, self.extra_sent = True, dict(self.extra)
        force = force or stage != self.stage  # a new stage (loading -> training) goes out at once
        self.stage = stage
        if self.throttle.offer(now, force=force):
            self._send(self.latest)

    def flush_if_overdue(self) -> None:
        now = self.clock()
        if self.latest is not None and self.throttle.overdue(now):
            self.throttle.offer(now, force=True)
            self._send(self.latest)

    def _send(self, patch: dict[str, Any]) -> None:
        try:
            self.sink(patch)
            if self.sink is not log_sink:
                log_sink(patch)
        except Exception as error:  # progress must never stop training
            self.failures += 1
            if self.failures <= 3 or self.failures % 50 == 0:
                log.warning("progress patch failed (%d so far): %s", self.failures, error)


def make_reporter(run: int, namespace: str, enabled: bool) -> Reporter:
    """The ConfigMap sink when the pod has a service-account token and the operator named its progress
    ConfigMap, else the log; a silent one off rank 0."""
    if not enabled:
        return Reporter(run, lambda patch: None)
    config_map = os.environ.get(CONFIG_MAP_ENV, "")
    if in_cluster() and config_map:
        try:
            return Reporter(run, config_map_sink(namespace, config_map))
        except Exception as error:
            log.warning("in-cluster progress reporting unavailable (%s); logging progress instead", error)
    return Reporter(run, log_sink)
