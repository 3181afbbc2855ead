"""Prometheus metrics of the operator itself: API requests by verb, reconciles, queue depth.

Why: on a shared cluster the operator's load on the API server is what platform engineers watch, and the
scale benchmark reads requests per FineTuneJob from here.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

API_REQUESTS = Counter("finetune_operator_api_requests_total", "Kubernetes API requests sent", ["verb"])
RECONCILES = Counter("finetune_operator_reconciles_total", "Reconcile passes", ["result"])
RECONCILE_SECONDS = Histogram("finetune_operator_reconcile_seconds", "Duration of one reconcile pass")
QUEUE_DEPTH = Gauge("finetune_operator_queue_depth", "FineTuneJobs waiting to be reconciled")
PHASES = Counter("finetune_operator_phase_transitions_total", "Phase changes", ["phase"])


def serve(port: int) -> None:
    """Expose /metrics on `port` (0: do nothing)."""
    if port:
        start_http_server(port)
