"""The storage layer against the real S3 server: file vs prefix, download once, upload, delete, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import StorageAccessDenied, StorageNotFound
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage

pytestmark = pytest.mark.s3


def put(s3_bucket: Any, key: str, body: bytes = b"x") -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=body)


def test_file_and_prefix_resolution(s3_bucket: Any) -> None:
    for key in ("data/train.jsonl", "data/training/a.jsonl", "data/training/b.jsonl", "data/training/"):
        put(s3_bucket, key)
    storage = Storage()

    def names(uri: str) -> list[str]:
        return [o.uri.key for o in storage.list(S3Uri.parse(uri))]

    assert names(s3_bucket.uri("data/train.jsonl")) == ["data/train.jsonl"]
    assert names(s3_bucket.uri("data/training")) == ["data/training/a.jsonl", "data/training/b.jsonl"]
    assert names(s3_bucket.uri("data/training/")) == ["data/training/a.jsonl", "data/training/b.jsonl"]
    assert names(s3_bucket.uri("data/nothing")) == []
    assert storage.exists(S3Uri.parse(s3_bucket.uri("data/train.jsonl")))
    assert not storage.exists(S3Uri.parse(s3_bucket.uri("data/nothing")))


def test_download_once_upload_and_delete(s3_bucket: Any, tmp_path: Path) -> None:
    put(s3_bucket, "model/config.json", b"{}")
    put(s3_bucket, "model/sub/weights.bin", b"w" * 3000)
    storage = Storage()
    paths = storage.download(S3Uri.parse(s3_bucket.uri("model/")), tmp_path / "m")
    assert sorted(p.relative_to(tmp_path / "m").as_posix() for p in paths) == ["config.json", "sub/weights.bin"]
    weights = tmp_path / "m" / "sub" / "weights.bin"
    stamp = weights.stat().st_mtime_ns
    storage.download(S3Uri.parse(s3_bucket.uri("model/")), tmp_path / "m")
    assert weights.stat().st_mtime_ns == stamp  # same size already local: not fetched again

    uploaded = storage.upload_dir(tmp_path / "m", S3Uri.parse(s3_bucket.uri("copy/")))
    assert sorted(str(u.uri) for u in uploaded) == [
        s3_bucket.uri("copy/config.json"),
        s3_bucket.uri("copy/sub/weights.bin"),
    ]
    assert storage.read_bytes(S3Uri.parse(s3_bucket.uri("copy/sub/weights.bin"))) == b"w" * 3000
    assert storage.delete_prefix(S3Uri.parse(s3_bucket.uri("copy"))) == 2
    assert storage.list(S3Uri.parse(s3_bucket.uri("copy/"))) == []
    assert len(storage.list(S3Uri.parse(s3_bucket.uri("model/")))) == 2  # a sibling prefix is untouched


def test_typed_errors(s3_bucket: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    storage = Storage()
    with pytest.raises(StorageNotFound, match="bucket 'no-such-bucket-fto' does not exist"):
        storage.list(S3Uri.parse("s3://no-such-bucket-fto/x"))
    with pytest.raises(StorageNotFound, match="no such key"):
        storage.read_bytes(S3Uri.parse(s3_bucket.uri("missing.json")))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    with pytest.raises(StorageAccessDenied, match=s3_bucket.uri("x")):
        Storage().list(S3Uri.parse(s3_bucket.uri("x")))
    local = tmp_path / "weights.bin"
    local.write_bytes(b"w" * 100)
    with pytest.raises(StorageAccessDenied, match=f"uploading {s3_bucket.uri('w.bin')}: access denied"):
        Storage().upload_file(local, S3Uri.parse(s3_bucket.uri("w.bin")))  # boto3 wraps this one
