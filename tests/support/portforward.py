"""`kubectl port-forward` to a Service for the length of a `with` block: how tests reach a pod's port here.

Why: the local cluster has no kube-proxy, so a ClusterIP is unreachable from the host; port-forward goes
through the API server to a pod behind the Service. The caller retries its first request: kubectl takes a
moment to start listening.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ports import free_port

TOOLS = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "bin" / "tools"


@contextmanager
def port_forward(kubeconfig: Path, namespace: str, service: str, remote_port: int) -> Iterator[int]:
    """Forward a free 127.0.0.1 port to `service`'s `remote_port` (`pod/NAME` for one pod); yields the local port."""
    kubectl = shutil.which("kubectl") or str(TOOLS / "kubectl")
    local = free_port()
    target = service if "/" in service else f"svc/{service}"
    forward = subprocess.Popen(
        [kubectl, "--kubeconfig", str(kubeconfig), "-n", namespace, "port-forward", target,
         f"{local}:{remote_port}", "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield local
    finally:
        forward.terminate()
        forward.wait(10)
