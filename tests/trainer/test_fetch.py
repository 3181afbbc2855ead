"""`python -m finetune_trainer fetch` against the real S3 server: folders land in place, errors exit 42.

The vLLM pod's init container runs exactly this command (fetch_container in
operator/finetune_operator/builders/containers.py), so these are the outcomes its pod shows: the files below each
--dest, or a termination message with the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.cli import main
from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE

pytestmark = pytest.mark.s3


def put(s3_bucket: Any, key: str, body: bytes) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=body)


def termination(tmp_path: Path) -> dict[str, Any]:
    written: dict[str, Any] = json.loads((tmp_path / "termination-log").read_text())
    return written


def files_below(folder: Path) -> dict[str, bytes]:
    """Every file below a folder but the hidden ETag records the storage layer keeps beside each copy."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".s3-etag")
    }


def test_fetches_base_and_adapter_folders(s3_bucket: Any, tmp_path: Path) -> None:
    put(s3_bucket, "models/base/config.json", b'{"model_type": "llama"}')
    put(s3_bucket, "models/base/model.safetensors", b"w" * 5000)
    put(s3_bucket, "out/run-2/model/adapter_config.json", b"{}")
    put(s3_bucket, "out/run-2/model/tokenizer/chat_template.jinja", b"{{ messages }}")
    put(s3_bucket, "out/run-2/metrics.json", b"{}")  # beside the model: not fetched
    base, adapter = tmp_path / "models" / "base", tmp_path / "models" / "adapter"
    arguments = ["fetch", "--uri", s3_bucket.uri("models/base/"), "--dest", str(base)]
    arguments += ["--uri", s3_bucket.uri("out/run-2/model"), "--dest", str(adapter)]
    assert main(arguments) == 0
    assert files_below(base) == {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"w" * 5000}
    assert files_below(adapter) == {"adapter_config.json": b"{}", "tokenizer/chat_template.jinja": b"{{ messages }}"}
    message = termination(tmp_path)
    assert message["code"] == "Succeeded"
    assert f"{s3_bucket.uri('models/base/')} -> {base} (2 file(s)" in message["message"]

    stamp = (base / "model.safetensors").stat().st_mtime_ns
    assert main(arguments) == 0  # a restarted init container: the same objects are not fetched again
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_missing_model_or_bucket_is_a_user_error(s3_bucket: Any, tmp_path: Path) -> None:
    dest = str(tmp_path / "m")
    assert main(["fetch", "--uri", s3_bucket.uri("models/absent/"), "--dest", dest]) == USER_ERROR_EXIT_CODE
    message = termination(tmp_path)
    assert message["code"] == "StorageNotFound" and s3_bucket.uri("models/absent/") in message["message"]
    assert main(["fetch", "--uri", "s3://no-such-bucket-fto/m/", "--dest", dest]) == USER_ERROR_EXIT_CODE
    message = termination(tmp_path)
    assert message["code"] == "StorageNotFound" and "bucket 'no-such-bucket-fto' does not exist" in message["message"]


def test_refused_credentials_are_a_user_error(s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(s3_bucket, "models/base/config.json", b"{}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    code = main(["fetch", "--uri", s3_bucket.uri("models/base/"), "--dest", str(tmp_path / "m")])
    assert code == USER_ERROR_EXIT_CODE
    assert termination(tmp_path)["code"] == "StorageAccessDenied"
    assert not (tmp_path / "m").exists()
