"""The launcher under SIGTERM before torchrun has a worker: a multi-node run waiting in rendezvous for a peer.

Real torchrun, real rendezvous: node 0 of a 2-node run waits for node 1, which never comes (its pod was
preempted). A SIGTERM then has no worker to reach; the pod must still stop promptly as preempted (exit 75,
a termination message saying why), not hang in rendezvous until the kubelet kills it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from finetune_trainer.core.errors import PREEMPTED_EXIT_CODE
from finetune_trainer.training.launch import WORKERLESS_GRACE_SECONDS

from tests.support.ports import free_port
from tests.trainer.builders import trainer_config


def _torchrun(pid: int) -> psutil.Process | None:
    """The launcher's torchrun child, once started (other children come and go: one gone meanwhile is skipped)."""
    for child in psutil.Process(pid).children():
        try:
            if "torch.distributed.run" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _listens(process: psutil.Process, port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp"))


def test_sigterm_while_waiting_for_a_peer_exits_preempted(
    s3_bucket: Any, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    raw = trainer_config(s3_bucket.name, s3_bucket.uri("models/x/"), s3_bucket.uri("data/train.jsonl"))
    raw["distributed"] = {"workers": 2, "processesPerWorker": 1}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    env = dict(trainer_env, MASTER_PORT=str(free_port()), NODE_RANK="0", MASTER_ADDR="127.0.0.1")
    command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # torchrun imports torch: give a busy machine its time
        torchrun = None
        while torchrun is None:
            assert process.poll() is None and time.monotonic() < deadline, "torchrun never started"
            torchrun = _torchrun(process.pid)
            time.sleep(0.2)
        # Not a pause: the positive sign that node 0 is in rendezvous is its store listening on MASTER_PORT for
        # node 1 (node 0 hosts the rendezvous store), which never comes
        port = int(env["MASTER_PORT"])
        while not _listens(torchrun, port):
            assert process.poll() is None, f"node 0 exited instead of waiting: {process.communicate()[0][-3000:]}"
            assert time.monotonic() < deadline, f"torchrun never listened on port {port} for its peer"
            time.sleep(0.2)
        assert process.poll() is None, "node 0 should be waiting for its peer"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    assert stopped_after < WORKERLESS_GRACE_SECONDS + 30
    assert "SIGTERM before any worker started" in output
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["code"] == "Preempted" and "before training started" in termination["message"]
