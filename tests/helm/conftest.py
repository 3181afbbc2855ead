"""The cluster tier's fixtures (CRD, jobs helper, a second namespace, report hook) for the chart's tests, and the
operator image of the current sources with the chart running it in the cluster (the `e2e` files)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (  # noqa: F401 - re-exported as fixtures
    crd,
    jobs,
    other_namespace,
    pytest_runtest_makereport,
)

from .chart import ROOT, install_in_cluster

CACHE = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))


def _refs(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="session")
def operator_refs() -> dict[str, str]:
    """Build (cached by content hash) and import the operator image only; other images' refs are kept.
    Returns its `FTO_OPERATOR_IMAGE` and `FTO_OPERATOR_ARCHIVE`."""
    refs_file = CACHE / "images" / "refs.env"
    before = _refs(refs_file)
    subprocess.run(
        ["hack/build-images.sh"],
        cwd=ROOT,
        env={**os.environ, "FTO_IMAGES": "operator"},
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=900,
    )
    built = _refs(refs_file)
    refs_file.write_text("".join(f"{k}={v}\n" for k, v in {**before, **built}.items()))
    image, archive = built["FTO_OPERATOR_IMAGE"], built["FTO_OPERATOR_ARCHIVE"]
    subprocess.run(
        ["hack/import-images.sh", f"{image}={archive}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=300
    )
    return {"FTO_OPERATOR_IMAGE": image, "FTO_OPERATOR_ARCHIVE": archive}


@pytest.fixture(scope="session")
def operator_image(operator_refs: dict[str, str]) -> str:
    return operator_refs["FTO_OPERATOR_IMAGE"]


@pytest.fixture
def in_cluster(cluster: Any, namespace: str, crd: str, operator_image: str) -> Iterator[str]:  # noqa: F811
    """The chart installed with the operator running as a pod; uninstalled afterwards."""
    with install_in_cluster(cluster, namespace, operator_image) as release:
        yield release
