"""The e2e tier's shared parts: the images of the current sources on the real node, and the chart installed
from them into the test's namespace (what `make demo` does, one release per test)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.support.crds import install_operator_crds

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, text=True, cwd=ROOT, **kwargs)


def s3_keys() -> dict[str, str]:
    """The local S3 server's keys as a `s3-creds` Secret holds them (the names boto3 reads)."""
    return {
        "AWS_ACCESS_KEY_ID": os.environ["FTO_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": os.environ["FTO_S3_SECRET_KEY"],
    }


def s3_client() -> Any:
    """A boto3 client of the local S3 server, as the tests' host side reaches it."""
    import boto3

    keys = s3_keys()
    return boto3.client(
        "s3",
        endpoint_url=os.environ["FTO_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )


def seed_demo(cluster: Cluster, namespace: str) -> dict[str, str]:
    """The demo's data and SmolLM2 in S3 (`hack/demo/seed.py`, as `make demo` seeds them) and the `s3-creds`
    Secret in `namespace`; returns the keys."""
    keys = s3_keys()
    run(
        sys.executable,
        "hack/demo/seed.py",
        "--endpoint",
        os.environ["FTO_S3_ENDPOINT"],
        "--access-key",
        keys["AWS_ACCESS_KEY_ID"],
        "--secret-key",
        keys["AWS_SECRET_ACCESS_KEY"],
        stdout=subprocess.DEVNULL,
    )
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": keys})
    return keys


def _build(names: str) -> dict[str, str]:
    """Build (cached by content) the named images of the current sources; the refs and archives of refs.env."""
    run("hack/build-images.sh", stdout=subprocess.DEVNULL, env=dict(os.environ, FTO_IMAGES=names))
    refs: dict[str, str] = {}
    for line in (CACHE / "images" / "refs.env").read_text().splitlines():
        key, _, value = line.partition("=")
        refs[key] = value
    return refs


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The trainer and operator images of the current sources, on the real node."""
    refs = _build("trainer operator")
    run(
        "hack/import-images.sh",
        f"{refs['FTO_TRAINER_IMAGE']}={refs['FTO_TRAINER_ARCHIVE']}",
        f"{refs['FTO_OPERATOR_IMAGE']}={refs['FTO_OPERATOR_ARCHIVE']}",
    )
    return refs


@pytest.fixture(scope="session")
def vllm_image(images: dict[str, str]) -> str:
    """vLLM's CPU build as `make images` builds it (hack/base-image/vllm.sh), on the real node; its ref."""
    refs = _build("vllm")
    run("hack/import-images.sh", f"{refs['FTO_VLLM_IMAGE']}={refs['FTO_VLLM_ARCHIVE']}")
    return refs["FTO_VLLM_IMAGE"]


@pytest.fixture(scope="session")
def operator_crds(cluster: Cluster) -> None:
    """The CRDs, for the tests that run the operator as a process instead of installing the chart (which brings
    them): on a fresh cluster such a test may be the first to need them."""
    install_operator_crds(cluster.api_client)


@dataclass(frozen=True)
class RealNodeRun:
    """What `real_node_run` prepared: the tiny model and data in a bucket of the test's own, and the S3 endpoint
    pods use; `args` is what real_node.manifest and serving_chaos.manifest take after the job's name."""

    model: str
    data: str
    bucket: str
    pod_s3_endpoint: str

    @property
    def args(self) -> tuple[str, str, str, str]:
        return self.model, self.data, self.bucket, self.pod_s3_endpoint


@pytest.fixture
def real_node_run(
    cluster: Cluster, namespace: str, images: dict[str, str], operator_crds: None, tmp_path: Path
) -> Iterator[RealNodeRun]:
    """The tiny Llama and its data seeded (tests/support/real_node.py), the S3 credentials in `namespace`, and the
    operator running on it as a process (its log: operator.log in the test's tmp_path)."""
    from tests.support import real_node

    bucket = "t-node-" + uuid.uuid4().hex[:10]
    model, data = real_node.seed(s3_client(), bucket, tmp_path)
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": s3_keys()})
    log = tmp_path / "operator.log"
    with real_node.operator_process(namespace, cluster.kubeconfig, images["FTO_TRAINER_IMAGE"], log):
        yield RealNodeRun(model, data, bucket, os.environ["FTO_POD_S3_ENDPOINT"])


@pytest.fixture
def installed(cluster: Cluster, namespace: str, images: dict[str, str]) -> Iterator[str]:
    """The chart installed as release `<namespace>` watching only `namespace`; yields the release name."""
    with install_chart(cluster, namespace, images) as release:
        yield release


@contextmanager
def install_chart(cluster: Cluster, namespace: str, images: dict[str, str], *sets: str) -> Iterator[str]:
    """The chart installed watching only `namespace`, with the images of the current sources and `sets`
    (more `--set key=value`); uninstalled on exit. Yields the release name."""
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
        *(arg for value in sets for arg in ("--set", value)),
        "--wait",
        "--timeout",
        "5m",
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield release
    finally:
        subprocess.run(
            ["helm", "uninstall", release, "--namespace", namespace, "--wait"],
            env=env,
            check=False,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )


def wait_phase(cluster: Cluster, namespace: str, name: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """The FineTuneJob's status once its phase is one of `phases`; fails with the last status after `timeout` s."""
    status: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = body.get("status") or {}
        if status.get("phase") in phases:
            return status
        time.sleep(2)
    raise AssertionError(f"{name} never reached {phases}: {status}")
