"""The container images: built by hack/build-images.sh for the current sources, and runnable as they ship.

The e2e tier runs these images on a real node, so this module checks them first, without a cluster: the OCI
archives exist under the refs that the current sources give (the script keys them by a hash of their inputs,
so a stale archive has another name), their configs run as a non-root numeric user with the entry points of
docs/trainer-contract.md, and, where runc and buildah are there (root), the trainer image really runs
`--help` and imports its stack as that user, without network, on a read-only root.
The fixture builds what is missing: seconds when warm, minutes cold (it copies GBs of torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# a cold build (in the module fixture) takes ~15 min on 2 busy cores; every test may be the first to need it
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "build-images.sh"
CAN_RUN = os.geteuid() == 0 and all(shutil.which(t) for t in ("buildah", "runc"))


def script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def refs() -> Iterator[dict[str, str]]:
    """The image refs and archive paths of the current sources, built if they are not yet."""
    if os.geteuid() != 0 or not shutil.which("buildah"):
        wanted = script("refs", timeout=120)
        assert wanted.returncode == 0, wanted.stderr
        yield env_lines(wanted.stdout)
        return
    for _attempt in range(2):  # once more if the sources changed while it built (developers at work)
        built = script("build", timeout=3000)
        assert built.returncode == 0, f"hack/build-images.sh build failed:\n{built.stderr[-4000:]}"
        if env_lines(built.stdout) == env_lines(script("refs", timeout=120).stdout):
            break
    yield env_lines(built.stdout)


def oci_config(archive: Path) -> tuple[str, dict[str, Any]]:
    """The ref name and the image config of a single-image OCI archive (read without unpacking layers)."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> Any:
            member = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
            assert member is not None
            return json.load(member)

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        (entry,) = json.load(index_file)["manifests"]
        manifest = blob(entry["digest"])
        config = blob(manifest["config"]["digest"])
    return entry.get("annotations", {}).get("org.opencontainers.image.ref.name", ""), config


@pytest.mark.parametrize("name", ["trainer", "operator", "vllm"])
def test_archive_exists_for_current_sources(refs: dict[str, str], name: str) -> None:
    wanted = env_lines(script("refs", timeout=120).stdout)
    key = name.upper()
    # differs only if the sources changed while the fixture built
    assert refs[f"FTO_{key}_IMAGE"] == wanted[f"FTO_{key}_IMAGE"], "sources changed during the build?"
    archive = Path(wanted[f"FTO_{key}_ARCHIVE"])
    assert archive.is_file(), f"{archive} missing: run hack/build-images.sh"
    ref_name, _ = oci_config(archive)
    # the archive's own name for its image is the pinned ref (`ctr images import` tags it so)
    assert ref_name == wanted[f"FTO_{key}_IMAGE"]
    # refs.env beside the archives is what other scripts (cluster import, demo) read
    written = env_lines((archive.parent / "refs.env").read_text())
    assert written[f"FTO_{key}_IMAGE"] == wanted[f"FTO_{key}_IMAGE"]


@pytest.mark.parametrize(
    ("name", "entrypoint", "cmd"),
    [
        ("trainer", ["python", "-m", "finetune_trainer"], ["train", "--config", "/etc/finetune/config.json"]),
        ("operator", ["python", "-m", "finetune_operator"], None),
        ("vllm", ["python3", "-m", "vllm.entrypoints.openai.api_server"], None),
    ],
)
def test_image_config(refs: dict[str, str], name: str, entrypoint: list[str], cmd: list[str] | None) -> None:
    _, config = oci_config(Path(refs[f"FTO_{name.upper()}_ARCHIVE"]))
    cfg = config["config"]
    uid, _, gid = cfg["User"].partition(":")
    # numeric and non-zero: Kubernetes' runAsNonRoot can only verify a numeric user
    assert uid.isdigit() and int(uid) != 0, cfg["User"]
    assert gid.isdigit() and int(gid) != 0, cfg["User"]
    assert cfg["Entrypoint"] == entrypoint
    assert cfg.get("Cmd") == cmd
    if name == "trainer":
        assert "HF_HUB_OFFLINE=1" in cfg["Env"]
        assert cfg["WorkingDir"] == "/home/trainer"
    if name == "vllm":  # vLLM's CPU build: its platform, and the allocator and OpenMP it asks for
        env = dict(item.split("=", 1) for item in cfg["Env"])
        assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["HF_HUB_OFFLINE"] == "1"
        assert env["LD_PRELOAD"].split(":") == [
            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            "/opt/venv/lib/libiomp5.so",
        ]


needs_runc = pytest.mark.skipif(not CAN_RUN, reason="running an image needs root, runc and buildah")


@needs_runc
def test_trainer_image_runs_help(refs: dict[str, str]) -> None:
    run = script("run", "trainer", "--help", timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "train" in run.stdout and "serve" in run.stdout


@needs_runc
def test_trainer_image_imports_its_stack_as_non_root(refs: dict[str, str]) -> None:
    probe = (
        "import os, torch, transformers, peft, datasets, boto3, fastapi, uvicorn, finetune_trainer;"
        "import mlflow, tensorboardX;"  # tracking: the MLflow client (mlflow-skinny) and the event writer
        "import rouge_score.rouge_scorer;"  # evaluation.generation: ROUGE-L, imported only when a run scores
        "import httpx, finetune_trainer.serving.gateway.app;"  # the gateway in front of vLLM
        "print(os.getuid(), os.getgid(), os.environ['HOME'], os.environ['HF_HUB_OFFLINE'], torch.__version__)"
    )
    run = script("run", "trainer", "--entrypoint", "python", "-c", probe, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    uid, gid, home, offline, _torch = run.stdout.split()
    assert (uid, gid, home, offline) == ("10001", "10001", "/home/trainer", "1")


@needs_runc
def test_operator_image_imports_as_non_root(refs: dict[str, str]) -> None:
    probe = "import os, kopf, kubernetes, finetune_operator; print(os.getuid())"
    run = script("run", "operator", "--entrypoint", "python", "-c", probe, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.split() == ["10001"]
