"""Fault injection for the chaos tests and `bench/chaos.py`: each fault is done for real, by this process.

- `Components`: stop and restart a local cluster's own processes (etcd, kube-apiserver, the kubelet...) by the
  PID files `hack/cluster.sh` keeps; a restart is `hack/cluster.sh up`, which starts what is dead and waits until
  it is healthy. `Components.down(name)` is a context manager whose exit always restores the component, so a
  test that fails in the middle still leaves the cluster whole for the tests after it.
- `FaultProxy`: a TCP proxy in front of a real server (the S3 server): `down()` resets every open connection
  and refuses new ones (accepted, then reset, so they are counted) until `up()`: a server that died and came
  back, as a client sees it, without stopping the server other clients share.
- `evict`: the Eviction API, which is what `kubectl drain` calls for each pod.

Which cluster: `tests.support.cluster.state_dir()` (FTO_STATE_DIR), the one the tests' kubeconfig belongs to.
Run faults that restart the control plane against a cluster of your own when others share the default one:
`FTO_STATE_DIR=/tmp/mine FTO_API_PORT=27443 ... FTO_REAL_NODE=0 hack/cluster.sh up` (hack/README.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.cluster import state_dir

REPO = Path(__file__).resolve().parents[2]


class Components:
    """The processes of the local cluster whose state folder is `state` (default: the tests' cluster)."""

    def __init__(self, state: Path | None = None) -> None:
        self.state = state or state_dir()

    def pid(self, name: str) -> int | None:
        pid_file = self.state / "pids" / f"{name}.pid"
        if not pid_file.exists():
            return None
        pid = int(pid_file.read_text().strip())
        return pid if Path(f"/proc/{pid}").exists() else None

    def stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 20.0) -> None:
        """Signal the component's process group (cluster.sh starts each in its own session); SIGKILL after
        `grace` seconds. Returns once the process is gone, so the next `start` really starts a new one."""
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"{name} is not running in the cluster of {self.state}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}").exists():
                time.sleep(0.1)

    def start(self, timeout: float = 300.0) -> None:
        """`hack/cluster.sh up` for this state folder: restarts every dead component, waits until healthy."""
        env = {**os.environ, "FTO_STATE_DIR": str(self.state)}
        done = subprocess.run(
            [str(REPO / "hack" / "cluster.sh"), "up"], env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"hack/cluster.sh up failed ({done.returncode}):\n{done.stderr[-3000:]}")

    @contextlib.contextmanager
    def down(self, name: str, sig: int = signal.SIGTERM) -> Iterator[None]:
        """The component is stopped inside the block and always running (and healthy) after it."""
        try:
            self.stop(name, sig)
            yield
        finally:
            self.start()

    def restart(self, name: str, sig: int = signal.SIGTERM) -> float:
        """Stop then start the component; returns the seconds until it was healthy again."""
        started = time.monotonic()
        with self.down(name, sig):
            pass
        return time.monotonic() - started


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a server whose process died does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to `upstream` (host, port) that a test takes down and brings back.

    Bytes pass unchanged (an S3 client's signatures stay valid: it signs the Host it connects to). While down,
    every connection, open or new, is reset; `refused` counts the new ones (a client's retries), `reset` the
    open ones cut."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.refused = 0
        self.reset = 0
        self.connections = 0
        self._down = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    @classmethod
    def to_url(cls, url: str, port: int = 0) -> FaultProxy:
        from urllib.parse import urlparse

        parsed = urlparse(url)
        return cls((parsed.hostname or "127.0.0.1", parsed.port or 80), port)

    @property
    def port(self) -> int:
        return int(self._server.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_down(self) -> bool:
        return self._down.is_set()

    def down(self) -> None:
        """From now on every connection is reset, the open ones at once."""
        self._down.set()
        with self._lock:
            doomed, self._open = self._open, set()
            self.reset += len(doomed) // 2
        for sock in doomed:
            _reset(sock)

    def up(self) -> None:
        self._down.clear()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.up()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self.down()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._down.is_set():
                with self._lock:
                    self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self.connections += 1
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if self._down.is_set():
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        if self._down.is_set():
            _reset(source)
            _reset(sink)
            return
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            self._open.discard(source)


def evict(core: Any, namespace: str, pod: str) -> None:
    """Evict a pod through the Eviction API (policy/v1), as `kubectl drain` does: PDBs are honoured, the pod
    gets its grace period and the DisruptionTarget condition."""
    from kubernetes import client

    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=namespace))
    core.create_namespaced_pod_eviction(pod, namespace, body)
