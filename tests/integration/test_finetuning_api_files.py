"""OpenAI's Files API (finetune_trainer.finetuning_api) against a real kube-apiserver and a real S3 server, called
with the official `openai` client.

The service runs in-process (uvicorn on 127.0.0.1) as a ServiceAccount bound to the ClusterRole the chart renders
for it (api.enabled): TokenReview, SubjectAccessReview and impersonation, nothing else. Tenants are ServiceAccounts
of two namespaces with TokenRequest tokens and Roles granting finetunejobs and their namespace's credentials
Secret, as docs/openai-api.md tells an admin to make; every refusal below is the API server's RBAC answering.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import finetuning_api as fapi
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

MAX_UPLOAD = 64 * 1024
SECRET = "finetune-storage"
CHAT = (
    b'{"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}\n'
    b'{"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]}\n'
)
TENANT_RULES = [
    {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs"], "verbs": ["get", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get"]},
]


@dataclass
class Api:
    url: str
    bucket: Any
    tokens: dict[str, str]  # "a", "b" (tenants), "nobody" (no RBAC), "jobs-only" (no Secret), by role
    namespaces: dict[str, str]
    config: Any

    def client_of(self, url: str, who: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=url + "/v1", api_key=self.tokens[who], max_retries=0)

    def client(self, who: str, project: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.tokens[who], project=project, max_retries=0)

    def keys(self, namespace: str) -> list[str]:
        listed = self.bucket.client.list_objects_v2(Bucket=self.bucket.name, Prefix=f"{namespace}/")
        return [item["Key"] for item in listed.get("Contents", [])]


@pytest.fixture
def api(cluster: Any, namespace: str, other_namespace: str, s3_bucket: Any, tmp_path: Path) -> Iterator[Api]:
    from finetune_trainer.finetuning_api.config import ApiConfig
    from kubernetes import client

    endpoint = s3_bucket.endpoint
    for ns in (namespace, other_namespace):
        cluster.core.create_namespaced_secret(
            ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=SECRET),
                string_data={"AWS_ACCESS_KEY_ID": endpoint.access_key, "AWS_SECRET_ACCESS_KEY": endpoint.secret_key},
            ),
        )
        fapi.service_account(cluster, ns, "tenant")
        fapi.bind(cluster, ns, "tenant", TENANT_RULES)
    fapi.service_account(cluster, namespace, "nobody")
    fapi.service_account(cluster, namespace, "jobs-only")
    fapi.bind(cluster, namespace, "jobs-only", TENANT_RULES[:1])
    for ns in (namespace, other_namespace):
        user = f"system:serviceaccount:{ns}:tenant"
        wait_for("a tenant's RBAC", lambda: fapi.allowed(cluster, user, ns, "get", "secrets", "", SECRET) or None)  # noqa: B023

    # the service: its own ServiceAccount, bound to exactly the chart's ClusterRole for it
    with fapi.service_identity(cluster, namespace, tmp_path) as kubeconfig:
        config = ApiConfig(
            bucket=s3_bucket.name,
            s3_endpoint=endpoint.url,
            s3_region=endpoint.region,
            max_upload_bytes=MAX_UPLOAD,
            kubeconfig=str(kubeconfig),
        )
        port, stop = fapi.serve(config)
        try:
            yield Api(
                url=f"http://127.0.0.1:{port}",
                bucket=s3_bucket,
                tokens={
                    "a": fapi.token(cluster, namespace, "tenant"),
                    "b": fapi.token(cluster, other_namespace, "tenant"),
                    "nobody": fapi.token(cluster, namespace, "nobody"),
                    "jobs-only": fapi.token(cluster, namespace, "jobs-only"),
                },
                namespaces={"a": namespace, "b": other_namespace},
                config=config,
            )
        finally:
            stop()


def test_upload_list_retrieve_content_delete(api: Api) -> None:
    client = api.client("a")
    created = client.files.create(file=("train.jsonl", CHAT), purpose="fine-tune")
    assert isinstance(created, openai.types.FileObject)
    assert created.id.startswith("file-") and created.object == "file" and created.purpose == "fine-tune"
    assert created.filename == "train.jsonl" and created.bytes == len(CHAT)
    assert created.status == "processed" and created.status_details is None
    assert abs(created.created_at - time.time()) < 60
    assert api.keys(api.namespaces["a"]) == [f"{api.namespaces['a']}/files/{created.id}.jsonl"]
    stored = api.bucket.client.head_object(Bucket=api.bucket.name, Key=api.keys(api.namespaces["a"])[0])
    # the sha256 the trainer checks its copy of the file against (core/integrity.py)
    assert stored["Metadata"]["fto-sha256"] == hashlib.sha256(CHAT).hexdigest()

    second = client.files.create(file=("more.jsonl", CHAT), purpose="fine-tune")
    listed = client.files.list()
    assert [f.id for f in listed.data] == [second.id, created.id]  # newest first, as OpenAI lists
    assert [f.id for f in client.files.list(order="asc", limit=1)] == [created.id, second.id]  # pages followed
    page = client.files.list(order="asc", limit=1)
    assert page.has_more and [f.id for f in page.data] == [created.id]
    assert [f.id for f in client.files.list(purpose="assistants").data] == []

    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).read() == CHAT

    deleted = client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)
    assert [f.id for f in client.files.list().data] == [second.id]
    assert api.keys(api.namespaces["a"]) == [f"{api.namespaces['a']}/files/{second.id}.jsonl"]


def test_any_replica_answers_for_a_file_another_one_stored(api: Api) -> None:
    """Nothing is kept in a replica's memory: a second one (a fresh app) lists, reads and deletes the file."""
    stored = api.client("a").files.create(file=("train.jsonl", CHAT), purpose="fine-tune")
    port, stop = fapi.serve(api.config)
    try:
        other = api.client_of(f"http://127.0.0.1:{port}", "a")
        assert other.files.retrieve(stored.id) == stored
        assert [f.id for f in other.files.list().data] == [stored.id]
        assert other.files.content(stored.id).read() == CHAT
        assert other.files.delete(stored.id).deleted
    finally:
        stop()
    with pytest.raises(openai.NotFoundError):
        api.client("a").files.retrieve(stored.id)


def test_malformed_jsonl_is_stored_with_status_error_naming_the_line(api: Api) -> None:
    client = api.client("a")
    bad = CHAT + b'{"messages": [{"role": "user", "content": "no closing brace"}\n'
    stored = client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert stored.status == "error"
    assert stored.status_details is not None and "bad.jsonl line 3: invalid JSON" in stored.status_details
    assert client.files.retrieve(stored.id).status_details == stored.status_details

    no_reply = b'{"messages": [{"role": "user", "content": "hello"}]}\n'
    stored = client.files.create(file=("no-reply.jsonl", no_reply), purpose="fine-tune")
    assert stored.status == "error" and "no-reply.jsonl line 1" in (stored.status_details or "")
    assert "assistant" in (stored.status_details or "")


def test_too_large_is_413_and_nothing_is_stored(api: Api) -> None:
    client = api.client("a")
    line = b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
    big = line * (MAX_UPLOAD // len(line) + 10)
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("big.jsonl", big), purpose="fine-tune")
    assert refused.value.status_code == 413
    assert "larger than this service's limit of 65536 bytes" in refused.value.message

    # without a Content-Length (chunked), the limit is enforced while reading
    boundary = "fto-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    answer = httpx.post(
        api.url + "/v1/files",
        content=body(),
        headers={
            "Authorization": f"Bearer {api.tokens['a']}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["param"] == "file"
    assert api.keys(api.namespaces["a"]) == []
    assert client.files.list().data == []


def test_tenants_see_only_their_own_files(api: Api) -> None:
    alice, bob = api.client("a"), api.client("b")
    mine = alice.files.create(file=("a.jsonl", CHAT), purpose="fine-tune")
    theirs = bob.files.create(file=("b.jsonl", CHAT), purpose="fine-tune")
    assert [f.id for f in alice.files.list().data] == [mine.id]
    assert [f.id for f in bob.files.list().data] == [theirs.id]
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(mine.id)
    assert alice.files.retrieve(mine.id).id == mine.id  # still there
    # naming the other tenant's namespace as the project: its RBAC says no
    with pytest.raises(openai.PermissionDeniedError):
        api.client("b", project=api.namespaces["a"]).files.list()
    # naming its own namespace works the same as the default
    assert [f.id for f in api.client("a", project=api.namespaces["a"]).files.list().data] == [mine.id]


def test_wrong_or_missing_token_is_401(api: Api) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=api.url + "/v1", api_key="not-a-token", max_retries=0).files.list()
    assert refused.value.code == "invalid_api_key"
    answer = httpx.get(api.url + "/v1/files")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"


def test_token_without_rbac_is_403_and_nothing_is_stored(api: Api) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        api.client("nobody").files.create(file=("a.jsonl", CHAT), purpose="fine-tune")
    assert "may not create finetunejobs.finetune.dev" in refused.value.message
    with pytest.raises(openai.PermissionDeniedError):
        api.client("nobody").files.list()
    # fine-tuning rights but no right to the namespace's storage credentials: still 403, naming the Secret
    with pytest.raises(openai.PermissionDeniedError) as refused:
        api.client("jobs-only").files.create(file=("a.jsonl", CHAT), purpose="fine-tune")
    assert f"may not get Secret {SECRET}" in refused.value.message
    assert api.keys(api.namespaces["a"]) == []


def test_unsupported_fields_are_refused_by_name(api: Api) -> None:
    client = api.client("a")
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("a.jsonl", CHAT), purpose="assistants")
    assert refused.value.param == "purpose"
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(
            file=("a.jsonl", CHAT), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
        )
    assert refused.value.param is not None and refused.value.param.startswith("expires_after")
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.list(extra_query={"colour": "blue"})
    assert refused.value.param == "colour"
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-../../other")
    assert api.keys(api.namespaces["a"]) == []


def test_impersonation_carries_the_callers_user_and_every_group(cluster: Any, namespace: str) -> None:
    from finetune_trainer.finetuning_api.kube import impersonating_client
    from kubernetes import client

    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "team-x")
    user = f"system:serviceaccount:{namespace}:someone"
    acting = impersonating_client(cluster.api_client.configuration, user, groups)
    review = client.AuthenticationV1Api(acting).create_self_subject_review(client.V1SelfSubjectReview())
    info: Any = review.status and review.status.user_info
    assert info is not None and info.username == user
    assert set(groups) <= set(info.groups or ())
