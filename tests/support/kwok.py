"""How tests put pods on the local cluster's kwok fake nodes and script their end (see hack/README.md)."""

from __future__ import annotations

from typing import Any

KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
KWOK_NODE_SELECTOR = {"type": "kwok"}
EXIT_CODE = "kwok.finetune.dev/exit-code"
MESSAGE = "kwok.finetune.dev/termination-message"
DELAY = "kwok.finetune.dev/delay"
REASON = "kwok.finetune.dev/reason"  # the container's termination reason, e.g. OOMKilled (default Completed/Error)


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
