"""A load loop against a Service's ready pods, routed as kube-proxy routes it, counting every failed request.

The local cluster has no kube-proxy (a ClusterIP is unreachable from the host) and a port-forward sticks to one
pod, so neither shows what a client of a Service sees during a rollout. This does what kube-proxy does, from the
Service's EndpointSlices: each request goes to an endpoint that is ready at that moment, the list re-read every
`refresh` seconds (kube-proxy follows the same slices, within about a second). Pod IPs are on the real node's
bridge, which the host reaches. A request to a pod just withdrawn from the Service, or cut off by its shutdown,
is a failure: that is what a rollout without a preStop drain or a PodDisruptionBudget would cost real clients.

Shared by tests/e2e/test_vllm.py (vLLM rolling to a retrained run), tests/e2e/test_chaos_serving.py and
bench/chaos.py (fault `serving`).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.waiting import wait_for


def ready_endpoints(api_client: Any, namespace: str, service: str) -> list[str]:
    """The Service's ready pod addresses, from its EndpointSlices (what kube-proxy routes new connections to)."""
    from kubernetes import client

    slices = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    )
    return sorted(
        address
        for item in slices.items
        for endpoint in item.endpoints or []
        if endpoint.conditions and endpoint.conditions.ready
        for address in endpoint.addresses
    )


@dataclass
class LoadReport:
    """What the clients saw: answers by pod address, failures (time, address, error) and latencies (s)."""

    answered: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.answered.values()) + len(self.failures)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "requests": self.sent,
            "failed": len(self.failures),
            "answered_by_pod": dict(self.answered),
            "p50_seconds": round(statistics.median(ordered), 3) if ordered else None,
            "p99_seconds": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3) if ordered else None,
            "first_failures": self.failures[:5],
        }


class EndpointLoad:
    """`concurrency` threads each sending one request after another to a random ready endpoint of `service`.

    `connect(address)` makes a client for one pod (kept per thread and address); `ask(client)` sends one request
    and raises on anything but a good answer. Use as a context manager: the threads run inside the block.
    """

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        service: str,
        connect: Callable[[str], Any],
        ask: Callable[[Any], None],
        *,
        concurrency: int = 8,
        pause: float = 0.0,
        refresh: float = 0.5,
    ) -> None:
        self._api_client, self._namespace, self._service = api_client, namespace, service
        self._connect, self._ask = connect, ask
        self._concurrency, self._pause, self._refresh = concurrency, pause, refresh
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._endpoints = ready_endpoints(api_client, namespace, service)
        self._report = LoadReport()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> EndpointLoad:
        self._threads = [threading.Thread(target=self._watch, daemon=True, name="endpoints")]
        self._threads += [
            threading.Thread(target=self._send, daemon=True, name=f"client-{i}") for i in range(self._concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def report(self) -> LoadReport:
        """A copy of what was seen so far."""
        with self._lock:
            return LoadReport(dict(self._report.answered), list(self._report.failures), list(self._report.latencies))

    def wait_answered(self, count: int, *, by: str | None = None, timeout: float = 300.0) -> None:
        """Block until `count` more requests are answered from now on (by the pod at address `by`, when given).

        Why: a window of load measured in answers, not seconds. "No request failed" after a fixed sleep also
        holds when no request was sent in it (a slow node); after this, it says something."""

        def answered() -> int:
            seen = self.report().answered
            return seen.get(by, 0) if by is not None else sum(seen.values())

        target = answered() + count
        wait_for(f"{count} more answers" + (f" from {by}" if by else ""), lambda: answered() >= target, timeout, 0.2)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                found = ready_endpoints(self._api_client, self._namespace, self._service)
            except Exception:  # an API hiccup: keep the last list, as kube-proxy would
                found = self._endpoints
            with self._lock:
                self._endpoints = found
            self._stop.wait(self._refresh)

    def _send(self) -> None:
        clients: dict[str, Any] = {}
        while not self._stop.is_set():
            with self._lock:
                choices = list(self._endpoints)
            if not choices:
                with self._lock:
                    self._report.failures.append(f"{time.strftime('%X')} no ready endpoint")
                self._stop.wait(0.5)
                continue
            address = random.choice(choices)
            started = time.monotonic()
            try:
                self._ask(clients.setdefault(address, self._connect(address)))
            except Exception as error:
                with self._lock:
                    self._report.failures.append(f"{time.strftime('%X')} {address}: {error!r}")
            else:
                with self._lock:
                    self._report.answered[address] = self._report.answered.get(address, 0) + 1
                    self._report.latencies.append(time.monotonic() - started)
            if self._pause:
                self._stop.wait(self._pause)
