"""Manifest helpers for tests that put pods on the local cluster's kwok nodes."""

from __future__ import annotations

from typing import Any

from tests.support.kwok import DELAY, EXIT_CODE, KWOK_TOLERATION, MESSAGE

__all__ = ["KWOK_TOLERATION", "job_condition", "kwok_pod_spec"]


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
        annotations = {EXIT_CODE: str(exit_code), DELAY: delay}
        if message is not None:
            annotations[MESSAGE] = message
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
