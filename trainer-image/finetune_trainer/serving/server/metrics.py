"""Prometheus metrics of the server: requests by route and status, latency, tokens in and out.

Why a registry per app: tests and the benchmark build several apps in one process, and the global
default registry refuses a second metric of the same name. Routes are labelled by their template
(`/v1/completions`), never by raw paths, so scanners hitting random URLs cannot explode the label set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    """The metric families of one app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fto_serve_requests",
            "HTTP requests answered, by route and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fto_serve_request_duration_seconds",
            "Time from request to the end of the response (streams included)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter("fto_serve_prompt_tokens", "Prompt tokens processed", registry=self.registry)
        self.generated_tokens = Counter(
            "fto_serve_generated_tokens", "Completion tokens generated", registry=self.registry
        )
        self.in_flight = Gauge(
            "fto_serve_requests_in_flight", "Generation requests being served", registry=self.registry
        )
        self.ready = Gauge("fto_serve_model_ready", "1 once the model is loaded, else 0", registry=self.registry)

    def count_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(completion_tokens)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class MetricsMiddleware:
    """Pure ASGI middleware (streams are timed to their last byte, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self, scope: dict[str, object], receive: Callable[..., Awaitable[object]], send: Callable[..., Awaitable[None]]
    ) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: dict[str, object]) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message["status"])  # type: ignore[call-overload]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            self.metrics.observe(
                path if isinstance(path, str) else "unmatched",
                str(scope.get("method", "")),
                status,
                time.perf_counter() - started,
            )
