"""How many CPU threads torch may use in this container.

Why: torch sizes its intra-op thread pool from the host's cores, not from the container's CPU limit. A pod
limited to 2 CPUs on a 64-core node then runs 64 compute threads that the kernel's CFS quota throttles in
bursts: every matrix multiply waits for the next quota period, and latency grows tenfold. The budget here is
the smallest of the CPUs this process may run on (affinity) and the cgroup's CPU quota rounded up; the
`FTO_TORCH_THREADS` environment variable overrides both. An `OMP_NUM_THREADS` that is already set (by the
user, or by torchrun for its worker processes) is left to torch. Parsing is pure; `configure_torch` does the I/O.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from finetune_trainer.core.errors import ConfigInvalid

log = logging.getLogger(__name__)

ENV_THREADS = "FTO_TORCH_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"); None when unlimited."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; None when unlimited (-1)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def quota_cpus(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup (v2, else v1), or None when there is none or it is unreadable."""
    try:
        v2 = root / "cpu.max"
        if v2.exists():
            return parse_cpu_max(v2.read_text())
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").exists():
            return parse_cfs((v1 / "cpu.cfs_quota_us").read_text(), (v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError) as error:
        log.debug("no readable cgroup CPU quota: %s", error)
    return None


def thread_budget(environ: Mapping[str, str], affinity: int, quota: float | None) -> int:
    """Threads for torch: FTO_TORCH_THREADS if set, else min(affinity, ceil(quota)), at least 1.

    Raises ConfigInvalid (naming the variable) for a value that is not a positive integer."""
    explicit = environ.get(ENV_THREADS, "").strip()
    if explicit:
        try:
            threads = int(explicit)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ConfigInvalid(f"{ENV_THREADS} must be a positive integer (threads for torch), not {explicit!r}")
        return threads
    budget = max(1, affinity)
    if quota is not None:
        budget = min(budget, max(1, math.ceil(quota)))
    return budget


def configure_torch(environ: Mapping[str, str] | None = None) -> int:
    """Size torch's intra-op thread pool to this container's CPU budget; returns the thread count."""
    import torch

    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS", "").strip() and not env.get(ENV_THREADS, "").strip():
        log.info("torch uses %d CPU thread(s) (OMP_NUM_THREADS)", torch.get_num_threads())
        return int(torch.get_num_threads())
    threads = thread_budget(env, len(os.sched_getaffinity(0)), quota_cpus())
    torch.set_num_threads(threads)
    log.info("torch uses %d CPU thread(s) (%s)", threads, ENV_THREADS if env.get(ENV_THREADS) else "CPU budget")
    return threads
