"""The build scripts CI starts in the background wait for each other instead of building twice.

Why: .ci/run builds Kueue, promtool and the vLLM venv in the background while the tests run, and the test that
needs one calls the same script. Without the lock the two would build into the same folder at once (a torn
binary, two pip installs in one venv); with it the test waits, then finds the build made. Here the "other
build" is a process holding the script's lock while the product is put in place, so no real build runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.versions import pinned

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"


def _hold(lock: Path) -> subprocess.Popen[bytes]:
    """Another build: holds `lock` until its stdin closes; returns once it holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        ["flock", str(lock), "bash", "-c", "echo held; read -r _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


def _until_waiting(waiting: subprocess.Popen[str], says: str) -> None:
    """Returns once `waiting` says on stderr that it waits for the lock; it must not have finished."""
    assert waiting.stderr is not None
    line = waiting.stderr.readline()
    assert says in line, f"expected it to wait for the lock, it said {line!r}"
    assert waiting.poll() is None, "it said it waits, then exited while the lock was still held"


def _release(holder: subprocess.Popen[bytes]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=10)


def test_a_second_binary_build_waits_for_the_first_and_finds_it_built(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    holder = _hold(cache / "locks" / "build-etcd.lock")
    waiting = subprocess.Popen(
        [str(HACK / "build-binaries.sh"), "etcd"],
        env={**os.environ, "FTO_CACHE": str(cache), "PATH": "/usr/bin:/bin"},  # no go: it must not build
        stderr=subprocess.PIPE,
        text=True,
    )
    _until_waiting(waiting, "etcd: waiting for another build of it")
    # the first build finishes: its binary is in place, then it lets go of the lock
    binary = cache / "bin" / f"etcd-{pinned('ETCD_VERSION')}" / "etcd"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    _release(holder)
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert "cached" in err and "building" not in err


def test_a_second_vllm_venv_install_waits_for_the_first_and_finds_it_made(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    venv = tmp_path / "venv-vllm"
    holder = _hold(cache / "locks" / "venv-vllm.lock")
    waiting = subprocess.Popen(
        [str(HACK / "venv-vllm.sh")],
        env={**os.environ, "FTO_CACHE": str(cache), "FTO_VLLM_VENV": str(venv)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _until_waiting(waiting, "waiting for another install")
    # the first install finishes: it stamps the venv with the key of the constraints and the script
    key = subprocess.run(
        f"cat {REPO}/vllm-image/constraints.txt {HACK}/venv-vllm.sh | sha256sum | cut -c1-16",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv.mkdir()
    (venv / f".fto-vllm-{key}").touch()
    _release(holder)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert out == f"{venv}\n"  # made by the other install: nothing installed here (no python in that venv)
