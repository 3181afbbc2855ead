"""Prometheus metrics of the operator itself: FineTuneJobs by phase, reconciles and errors, API latency.

Why: on a shared cluster the operator's load on the API server is what platform engineers watch, and the
scale benchmark reads requests per FineTuneJob from here. Alerts page on jobs stuck in a phase
(`finetune_operator_finetunejobs{phase="Failed"}`), on reconcile errors, and on slow child creation (an
admission webhook such as Kueue's sits in that path).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

API_REQUESTS = Counter("finetune_operator_api_requests_total", "Kubernetes API requests sent", ["verb"])
RECONCILES = Counter("finetune_operator_reconciles_total", "Reconcile passes", ["result"])
RECONCILE_SECONDS = Histogram("finetune_operator_reconcile_seconds", "Duration of one reconcile pass")
RECONCILE_ERRORS = Counter(
    "finetune_operator_reconcile_errors_total",
    "Reconcile passes that failed: temporary (retried), permanent (the API refused the spec: Failed), "
    "unexpected (a bug; retried with backoff)",
    ["kind"],
)
QUEUE_DEPTH = Gauge("finetune_operator_queue_depth", "FineTuneJobs waiting to be reconciled")
NODE_PRESSURE_EVICTIONS = Counter(
    "finetune_operator_node_pressure_evictions_total",
    "Run pods the kubelet evicted because their node ran low, by resource (finetunejob/evictions.py)",
    ["resource"],
)
PHASES = Counter("finetune_operator_phase_transitions_total", "Phase changes", ["phase"])
CHILD_CREATE_SECONDS = Histogram(
    "finetune_operator_child_create_seconds",
    "Latency of one create or server-side apply of a child object (API server and admission webhooks)",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

KNOWN_PHASES = (
    "Pending",
    "Queued",
    "Training",
    "Evaluating",
    "Publishing",
    "Serving",
    "Succeeded",
    "Failed",
    "Suspended",
)


class PhaseTracker(Collector):
    """`finetune_operator_finetunejobs{phase}`: how many FineTuneJobs are in each phase right now.

    Why a collector and not a Gauge moved up and down: the count is derived at scrape time from the last
    phase each reconcile wrote, so it can never drift (a missed decrement would skew a Gauge forever).
    Every known phase is exported, zero included, so `== 0` and `absent()` alerts behave.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def counts(self) -> dict[str, int]:
        totals = dict.fromkeys(KNOWN_PHASES, 0)
        with self._lock:
            for phase in self._phases.values():
                totals[phase] = totals.get(phase, 0) + 1
        return totals

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "finetune_operator_finetunejobs", "FineTuneJobs by phase (as last reconciled)", labels=["phase"]
        )
        for phase, count in sorted(self.counts().items()):
            family.add_metric([phase], count)
        yield family


JOBS_BY_PHASE = PhaseTracker()
REGISTRY.register(JOBS_BY_PHASE)


def serve(port: int) -> None:
    """Expose /metrics on `port` (0: do nothing)."""
    if port:
        start_http_server(port)
