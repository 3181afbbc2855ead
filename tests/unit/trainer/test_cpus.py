"""torch's CPU thread budget: cgroup quota and affinity parsing (pure), and a real process that applies it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_trainer.core.cpus import ENV_THREADS, parse_cfs, parse_cpu_max, quota_cpus, thread_budget
from finetune_trainer.core.errors import ConfigInvalid


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5), ("", None)],
)
def test_cgroup_v2_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_cgroup_v1_cfs_quota() -> None:
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("300000\n", "100000\n") == 3.0


def test_quota_is_read_from_v2_then_v1_and_absent_is_none(tmp_path: Path) -> None:
    assert quota_cpus(tmp_path) is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cpus(tmp_path) == 4.0
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert quota_cpus(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("garbage here\n")
    assert quota_cpus(tmp_path) is None  # unreadable: no budget rather than a crash


@pytest.mark.parametrize(
    ("environ", "affinity", "quota", "threads"),
    [
        ({}, 64, 2.0, 2),  # a 2-CPU limit on a 64-core node: 2, not 64
        ({}, 64, 1.5, 2),  # a fractional quota rounds up
        ({}, 64, 0.25, 1),  # at least one
        ({}, 4, 16.0, 4),  # pinned to 4 CPUs: affinity wins
        ({}, 8, None, 8),  # no quota: every CPU we may run on
        ({ENV_THREADS: "3"}, 64, 2.0, 3),  # the operator of the cluster knows best
        ({ENV_THREADS: " "}, 8, None, 8),  # blank is unset
    ],
)
def test_thread_budget(environ: dict[str, str], affinity: int, quota: float | None, threads: int) -> None:
    assert thread_budget(environ, affinity, quota) == threads


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_override_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigInvalid, match=ENV_THREADS):
        thread_budget({ENV_THREADS: value}, 8, None)


def test_a_process_pinned_to_one_cpu_gets_one_torch_thread() -> None:
    """The real thing: affinity set by the OS, torch's pool sized by configure_torch in a fresh interpreter."""
    code = (
        "import json, os, torch; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from finetune_trainer.core.cpus import configure_torch; n = configure_torch(dict(os.environ));"
        "print(json.dumps([n, torch.get_num_threads()]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in (ENV_THREADS, "OMP_NUM_THREADS")}
    omp = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, check=True
    )
    assert json.loads(omp.stdout.strip().splitlines()[-1]) == [2, 2]  # torchrun's (or the user's) choice stands
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 1]
    override = subprocess.run(
        [
            sys.executable,
            "-c",
            code.replace("configure_torch(dict(os.environ))", f"configure_torch({{'{ENV_THREADS}': '2'}})"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(override.stdout.strip().splitlines()[-1]) == [2, 2]
