"""Small polling and manifest helpers for tests that watch a real cluster converge."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def eventually(
    probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


def kwok_pod_spec(
    *,
    exit_code: int | None = 0,
    message: str | None = None,
    delay: str = "1s",
    gpus: int = 0,
    restart_policy: str = "Never",
) -> dict[str, Any]:
    """A pod template for kwok fake nodes that ends with `exit_code` (None: runs until stopped)."""
    annotations: dict[str, str] = {}
    if exit_code is not None:
        annotations = {"kwok.finetune.dev/exit-code": str(exit_code), "kwok.finetune.dev/delay": delay}
        if message is not None:
            annotations["kwok.finetune.dev/termination-message"] = message
    container: dict[str, Any] = {"name": "trainer", "image": "fake.local/trainer:v1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "metadata": {"annotations": annotations},
        "spec": {
            "restartPolicy": restart_policy,
            "tolerations": [KWOK_TOLERATION],
            "containers": [container],
        },
    }


def job_condition(job: Any, kind: str) -> Any | None:
    """The Job condition of type `kind` when its status is True, else None."""
    for condition in job.status.conditions or []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None
