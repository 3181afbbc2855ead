"""Fixtures shared by every test tier: a cluster, a namespace per test, an S3 bucket per test.

The session cluster is `$KUBECONFIG` when set, else the local one from `make cluster-up`. Each test gets a
fresh namespace (deleted afterwards) and, when it asks, a fresh bucket on a real S3 server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import cluster as cluster_support
from tests.support.s3server import LocalS3Server, S3Endpoint, from_environment

for _key, _value in cluster_support.load_env_file().items():
    os.environ.setdefault(_key, _value)

E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The e2e tier runs last, the others in their usual order.

    Why: the e2e tests are most of the suite's time and need the images, the slowest build of a cold machine.
    Run last, they let a broken unit fail in minutes, and they let CI build the images in the background while
    every other tier runs (their fixture waits for that build; see .ci/run).
    """
    items.sort(key=lambda item: item.path.is_relative_to(E2E))  # stable: every other order is kept


@dataclass(frozen=True)
class Cluster:
    """The API server the tests use, and typed clients for it."""

    kubeconfig: Path
    api_client: Any
    local: bool

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    @property
    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.api_client)

    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.api_client)

    @property
    def rbac(self) -> Any:
        from kubernetes import client

        return client.RbacAuthorizationV1Api(self.api_client)

    @property
    def networking(self) -> Any:
        from kubernetes import client

        return client.NetworkingV1Api(self.api_client)

    @property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    from kubernetes import client, config

    path = cluster_support.kubeconfig_path()
    api_client = config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
    client.VersionApi(api_client).get_code()  # fails loudly when the server is down
    return Cluster(path, api_client, cluster_support.is_local_cluster(path))


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for one test; deleted (with everything in it) afterwards."""
    from kubernetes import client

    base = request.node.name.lower().replace("_", "-")
    readable = "".join(c for c in base if c.isalnum() or c == "-")[:40].strip("-")
    name = f"t-{readable}-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"finetune.dev/test": "true"}))
    )
    yield name
    try:
        cluster.core.delete_namespace(name, propagation_policy="Background")
    except client.ApiException as error:
        if error.status != 404:
            raise


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """The cluster's S3 server when `make cluster-up` runs one, else a private one for this session."""
    existing = from_environment()
    if existing:
        yield existing
        return
    server = LocalS3Server(tmp_path_factory.mktemp("s3"))
    try:
        yield server.start()
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Bucket:
    """One empty bucket on a real S3 server, with a client that can read and write it."""

    name: str
    endpoint: S3Endpoint
    client: Any

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket; the AWS_* variables point boto3 at it for code under test."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id=s3_endpoint.access_key,
        aws_secret_access_key=s3_endpoint.secret_key,
        region_name=s3_endpoint.region,
    )
    name = "t-" + uuid.uuid4().hex[:16]
    client.create_bucket(Bucket=name)
    for key, value in s3_endpoint.env().items():
        monkeypatch.setenv(key, value)
    yield S3Bucket(name, s3_endpoint, client)
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)
