"""The e2e tier's shared parts: the images of the current sources on the real node, and the chart installed
from them into the test's namespace (what `make demo` does, one release per test)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, text=True, cwd=ROOT, **kwargs)


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The trainer and operator images of the current sources, on the real node."""
    run("hack/build-images.sh", stdout=subprocess.DEVNULL)
    refs: dict[str, str] = {}
    for line in (CACHE / "images" / "refs.env").read_text().splitlines():
        key, _, value = line.partition("=")
        refs[key] = value
    run(
        "hack/import-images.sh",
        f"{refs['FTO_TRAINER_IMAGE']}={refs['FTO_TRAINER_ARCHIVE']}",
        f"{refs['FTO_OPERATOR_IMAGE']}={refs['FTO_OPERATOR_ARCHIVE']}",
    )
    return refs


@pytest.fixture
def installed(cluster: Cluster, namespace: str, images: dict[str, str]) -> Iterator[str]:
    """The chart installed as release `<namespace>` watching only `namespace`; yields the release name."""
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    operator = images["FTO_OPERATOR_IMAGE"]
    release = "e2e-" + uuid.uuid4().hex[:8]
    run(
        "helm",
        "upgrade",
        "--install",
        release,
        "helm/finetune-operator",
        "--namespace",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        f"image.repository={operator.rsplit(':', 1)[0]}",
        "--set",
        f"image.tag={operator.rsplit(':', 1)[1]}",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        f"trainer.image={images['FTO_TRAINER_IMAGE']}",
        "--set",
        "childImagePullPolicy=Never",
        "--wait",
        "--timeout",
        "5m",
        env=env,
        stdout=subprocess.DEVNULL,
    )
    yield release
    subprocess.run(
        ["helm", "uninstall", release, "--namespace", namespace, "--wait"],
        env=env,
        check=False,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
