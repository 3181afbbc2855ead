"""Launching several processes per pod (torchrun) without losing the exit contract.

Why: torchrun exits 1 whenever a worker fails, so a user error (42) would burn the Job's retries, and on
SIGTERM it kills its workers after a fixed grace period, possibly mid-checkpoint, and never exits 75.
When the config asks for more than one process and we are not already a torchrun worker, `train` starts
torchrun itself (NODE_RANK, MASTER_ADDR, MASTER_PORT from the pod's environment), passes SIGTERM straight
to the workers so each can checkpoint, and exits with the code the workers' termination message implies
(`pod_exit_code`, pure). The termination message itself is the one the workers wrote.

A SIGTERM can also arrive before torchrun has started any worker (a multi-node run waiting in rendezvous
for a peer that was preempted). Then there is nobody to forward it to: the launcher stops torchrun itself
once it has seen no worker for `WORKERLESS_GRACE_SECONDS`, and exits 75 (Preempted) with a termination
message of its own - a stopped pod, not a failed one, and not one that hangs until the kubelet kills it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from finetune_trainer.core.errors import (
    INTERNAL_ERROR_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    USER_ERROR_CODES,
    USER_ERROR_EXIT_CODE,
)
from finetune_trainer.core.termination import DEFAULT_PATH, termination_line, write_termination

log = logging.getLogger(__name__)

WORKERLESS_GRACE_SECONDS = 2.0
"""How long after SIGTERM a torchrun with no worker yet is left to start one before it is stopped itself."""


def processes(raw: dict[str, Any]) -> tuple[int, int]:
    """(workers, processes per worker) from a decoded config (defaults 1, 1; validated later)."""
    section = raw.get("distributed") or {}
    return int(section.get("workers", 1) or 1), int(section.get("processesPerWorker", 1) or 1)


def needs_launch(raw: dict[str, Any], environ: dict[str, str]) -> bool:
    """True when the job wants several processes, or a sharded (FSDP) run even of one (FSDP needs a process
    group), and this process is not one of torchrun's workers."""
    workers, per_worker = processes(raw)
    fsdp = (raw.get("distributed") or {}).get("sharding") == "fsdp"
    return (workers * per_worker > 1 or fsdp) and "LOCAL_RANK" not in environ


def pod_exit_code(code: str | None, returncode: int) -> int:
    """The pod's exit code from the workers' termination code and torchrun's own exit status."""
    if returncode < 0:  # killed by a signal: report it the way a shell would (128 + signal)
        returncode = 128 - returncode
    if code == "Succeeded":
        return 0 if returncode == 0 else (returncode or INTERNAL_ERROR_EXIT_CODE)
    if code in USER_ERROR_CODES:
        return USER_ERROR_EXIT_CODE
    if code == "Preempted":
        return PREEMPTED_EXIT_CODE
    return returncode if returncode not in (0, USER_ERROR_EXIT_CODE, PREEMPTED_EXIT_CODE) else INTERNAL_ERROR_EXIT_CODE


def torchrun_command(config_path: Path, workers: int, per_worker: int, environ: dict[str, str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={workers}", f"--nproc-per-node={per_worker}",
        f"--node-rank={environ.get('NODE_RANK', '0')}",
        f"--master-addr={environ.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master-port={environ.get('MASTER_PORT', '29500')}",
        "-m", "finetune_trainer", "train", "--config", str(config_path),
    ]  # fmt: skip


def _signal_workers(process: subprocess.Popen[bytes], signum: int) -> int:
    """Send `signum` to torchrun's worker processes (not torchrun: it would kill them after a timeout);
    returns how many were signalled."""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signum)
    return len(children)


def _wait(process: subprocess.Popen[bytes], stop_requested_at: list[float]) -> int:
    """Wait for torchrun; after a SIGTERM that found no worker, stop torchrun itself once the grace ends."""
    stopped_torchrun = False
    while True:
        try:
            return process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        waited = time.monotonic() - stop_requested_at[0] if stop_requested_at else 0.0
        if waited >= WORKERLESS_GRACE_SECONDS and not stopped_torchrun:
            log.warning("SIGTERM before any worker started: stopping torchrun")
            process.send_signal(signal.SIGTERM)
            stopped_torchrun = True


def launch(config_path: Path, raw: dict[str, Any]) -> int:
    """Run torchrun with this config; return the exit code the contract asks for."""
    workers, per_worker = processes(raw)
    termination = Path(os.environ.get("FTO_TERMINATION_LOG", DEFAULT_PATH))
    with contextlib.suppress(OSError):
        termination.write_text("")
    command = torchrun_command(config_path, workers, per_worker, dict(os.environ))
    log.info("launching %d x %d processes: %s", workers, per_worker, " ".join(command))
    process = subprocess.Popen(command)
    workerless_stop: list[float] = []  # when a SIGTERM found no worker to pass to (empty: none did)

    def forward(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: asking the workers to checkpoint and stop")
        if _signal_workers(process, signum) == 0 and not workerless_stop:
            workerless_stop.append(time.monotonic())

    signal.signal(signal.SIGTERM, forward)
    returncode = _wait(process, workerless_stop)
    code = None
    with contextlib.suppress(OSError, json.JSONDecodeError):
        code = json.loads(termination.read_text() or "{}").get("code")
    run = (raw.get("job") or {}).get("run")
    run_number = run if isinstance(run, int) else None
    if code is None and workerless_stop:
        code = "Preempted"
        message = "stopped (SIGTERM) before training started; nothing to checkpoint, the next pod starts over"
        write_termination(termination_line(code, message, run_number))
    elif code is None and returncode == 0 and int(os.environ.get("NODE_RANK", "0") or 0) > 0:
        # Only rank 0 (on node 0) writes the run's report; a node whose workers all exited 0 succeeded, and
        # must say so, or its pod fails and an Indexed Job's index never completes.
        code = "Succeeded"
        message = "this node's workers finished; node 0's pod reports the run"
        write_termination(termination_line(code, message, run_number))
    exit_code = pod_exit_code(code, returncode)
    if code is None:
        message = f"torchrun exited {returncode} and no worker wrote a termination message (see the pod log)"
        write_termination(termination_line("InternalError", message, run_number))
    log.info("torchrun exited %d, workers reported %s: exit %d", returncode, code, exit_code)
    return exit_code
