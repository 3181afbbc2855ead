"""Pure parts of OpenAI's fine-tuning API service: file ids and keys (file_store), the namespace a caller acts in
(auth.namespace_for), the service's settings (ApiConfig.from_env) and the upload check (upload_check)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.finetuning_api import file_store
from finetune_trainer.finetuning_api.auth import namespace_for
from finetune_trainer.finetuning_api.config import ApiConfig
from finetune_trainer.finetuning_api.errors import ApiError
from finetune_trainer.finetuning_api.file_objects import FileObjects
from finetune_trainer.finetuning_api.routes_jobs import storage_of
from finetune_trainer.finetuning_api.upload_check import check_file

CONFIG = ApiConfig(bucket="files")


def test_ids_carry_their_creation_time_and_sort_by_it() -> None:
    first = file_store.new_file_id(now_ms=1_700_000_000_000, rand="ffffffffffff")
    later = file_store.new_file_id(now_ms=1_700_000_000_001, rand="000000000000")
    assert first == "file-018bcfe56800ffffffffffff"
    assert first < later
    assert file_store.created_at(first) == 1_700_000_000
    fresh = {file_store.new_file_id() for _ in range(100)}
    assert len(fresh) == 100 and all(file_store.FILE_ID.match(i) for i in fresh)


def test_keys_and_uris_stay_in_the_namespace_folder() -> None:
    file_id = "file-018bcfe56800ffffffffffff"
    assert file_store.object_key("team-a", file_id) == f"team-a/files/{file_id}.jsonl"
    assert file_store.file_uri(CONFIG, "team-a", file_id) == f"s3://files/team-a/files/{file_id}.jsonl"
    assert file_store.file_id_of_key("team-a", f"team-a/files/{file_id}.jsonl") == file_id
    assert file_store.file_id_of_key("team-b", f"team-a/files/{file_id}.jsonl") is None
    assert file_store.file_id_of_key("team-a", "team-a/files/notes.txt") is None
    assert file_store.file_id_of_key("team-a", f"team-a/files/x/{file_id}.jsonl") is None


@pytest.mark.parametrize("namespace", ["", "Team", "a/b", "..", "a.b", "-a", "a-", "x" * 64, "a b", "team/../b"])
def test_bad_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(file_store.BadName, match="not a namespace name"):
        file_store.object_key(namespace, "file-018bcfe56800ffffffffffff")


@pytest.mark.parametrize(
    "file_id", ["", "file-", "file-../../b", "file-018BCFE56800FFFFFFFFFFFF", "file-018bcfe56800ffffffffffff0", "x"]
)
def test_bad_ids_are_refused(file_id: str) -> None:
    with pytest.raises(file_store.BadName, match="not a file id"):
        file_store.object_key("team-a", file_id)


def test_namespace_is_the_project_else_the_service_accounts() -> None:
    assert namespace_for("system:serviceaccount:team-a:ci", None) == "team-a"
    assert namespace_for("system:serviceaccount:team-a:ci", "team-b") == "team-b"  # RBAC then decides
    assert namespace_for("alice@example.com", "team-b") == "team-b"
    with pytest.raises(ApiError) as refused:
        namespace_for("alice@example.com", None)
    assert (
        refused.value.status == 400 and refused.value.param == "project" and "OpenAI-Project" in refused.value.message
    )
    with pytest.raises(ApiError) as refused:
        namespace_for("system:serviceaccount:team-a:ci", "../kube-system")
    assert refused.value.status == 400 and refused.value.param == "project"


def test_config_from_env() -> None:
    config = ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_MAX_UPLOAD_BYTES": "1024", "FTO_API_PORT": "6443"})
    assert config.bucket == "b" and config.max_upload_bytes == 1024
    assert config.port == 8080  # FTO_API_PORT is the dev cluster's API server port, not ours
    assert config.credentials_secret == "finetune-storage" and config.catalog_path == "/etc/finetune-api/models.yaml"
    assert ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_LISTEN_PORT": "9000"}).port == 9000
    with pytest.raises(ConfigInvalid, match="FTO_API_BUCKET"):
        ApiConfig.from_env({})
    with pytest.raises(ConfigInvalid, match="FTO_API_MAX_UPLOAD_BYTES"):
        ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_MAX_UPLOAD_BYTES": "lots"})
    with pytest.raises(ConfigInvalid, match="must be positive"):
        ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_MAX_UPLOAD_BYTES": "0"})


def test_a_store_whose_etags_are_not_md5s_reaches_every_api_job() -> None:
    """`api.files.etagIsMd5: false` (FTO_API_S3_ETAG_MD5=off) becomes `spec.storage.etagIsMd5: false` on the jobs
    the API creates; by default the key is left out (the CRD's default, true); a typo is refused by name."""
    assert ApiConfig.from_env({"FTO_API_BUCKET": "b"}).s3_etag_md5 is True
    assert ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_S3_ETAG_MD5": "on"}).s3_etag_md5 is True
    off = ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_S3_ETAG_MD5": "OFF"})
    assert off.s3_etag_md5 is False
    with pytest.raises(ConfigInvalid, match="FTO_API_S3_ETAG_MD5: must be on or off, got 'no'"):
        ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_S3_ETAG_MD5": "no"})
    assert "etagIsMd5" not in storage_of(CONFIG)
    assert storage_of(off) == {"credentialsSecret": "finetune-storage", "region": "us-east-1", "etagIsMd5": False}


class _OneObject:
    """An S3 client (the one boundary `FileObjects` talks to) holding one object whose single-PUT ETag is not an
    MD5 of its bytes, as some S3-compatible stores answer; a GET returns what boto3 would."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # boto3's parameter names
        return {"Body": io.BytesIO(self.data), "ContentLength": len(self.data), "ETag": '"' + "0" * 32 + '"',
                "LastModified": datetime(2026, 12, 7, tzinfo=UTC)}  # fmt: skip


def test_the_services_own_reads_follow_the_etag_switch() -> None:
    """A run's metrics.json without a recorded sha256 is checked against its ETag only where the store's ETags are
    MD5s: with `api.files.etagIsMd5: false` the service reads it, as the job's pods do; with the default a
    mismatch is a 502 naming the object (after a second read)."""
    client = _OneObject(b'{"test": {"loss": 1.0}}')
    off = ApiConfig.from_env({"FTO_API_BUCKET": "b", "FTO_API_S3_ETAG_MD5": "off"})
    data, _ = FileObjects(off, "ns", client).read_object("ns/jobs/j/run-1/metrics.json", "metrics")
    assert data == client.data
    with pytest.raises(ApiError) as refused:
        FileObjects(CONFIG, "ns", client).read_object("ns/jobs/j/run-1/metrics.json", "metrics")
    assert refused.value.status == 502 and "s3://files/ns/jobs/j/run-1/metrics.json" in str(refused.value)


CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        (CHAT * 30, "processed", None),
        ('{"prompt": "a", "completion": "b"}\n', "processed", None),
        (CHAT + "{oops\n", "error", "t.jsonl line 2: invalid JSON"),
        (CHAT * 25 + '{"messages": [{"role": "user", "content": "hi"}]}\n', "error", "t.jsonl line 26"),
        ("\n\n", "error", "no records"),
        ('{"colour": "blue"}\n', "error", "cannot tell the dataset schema"),
        ("[1, 2]\n", "error", "t.jsonl line 1: expected a JSON object"),
    ],
    ids=["chat", "prompt-completion", "bad-json", "bad-record-after-the-sample", "empty", "unknown-schema", "array"],
)
def test_upload_check(tmp_path: Path, text: str, status: str, says: str | None) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(text)
    checked = check_file(path, "t.jsonl")
    assert checked.status == status
    if says is None:
        assert checked.details is None and checked.schema
    else:
        assert checked.details is not None and says in checked.details


def test_the_entry_point_refuses_a_missing_bucket_and_serves_health() -> None:
    """`python -m finetune_trainer.finetuning_api`, what the chart's Deployment runs."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.support.ports import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("FTO_API_")}
    refused = subprocess.run(
        [sys.executable, "-m", "finetune_trainer.finetuning_api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "FTO_API_BUCKET is empty" in refused.stderr

    port = free_port()
    env.update(FTO_API_BUCKET="files", FTO_API_HOST="127.0.0.1", FTO_API_LISTEN_PORT=str(port))
    server = subprocess.Popen([sys.executable, "-m", "finetune_trainer.finetuning_api"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
