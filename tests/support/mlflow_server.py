"""A real `mlflow server` (PyPI `mlflow`: sqlite store, artifacts proxied to a local folder) for the tracking tests.

One home for starting it, waiting for GET /health and stopping its whole process group: the trainer tier runs it on
127.0.0.1, the e2e tier on the node bridge's gateway (the address pods reach the host on).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import free_port


@contextlib.contextmanager
def mlflow_server(folder: Path, host: str = "127.0.0.1", ready_seconds: float = 300) -> Iterator[str]:
    """The server listening on `host` (a free port), its store and log in `folder`; yields its URL once healthy."""
    port = free_port()
    url = f"http://{host}:{port}"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        f"--host={host}",
        f"--port={port}",
        f"--backend-store-uri=sqlite:///{folder}/mlflow.db",
        f"--artifacts-destination={folder}/artifacts",
        "--workers=1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner: tracking needs none
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + ready_seconds
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"mlflow server exited {server.returncode}: {log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server not ready in {ready_seconds} s: {log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
