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


def _trained_model(s3_bucket: Any, tmp_path: Path, prefix: str = "out/run-2/model/") -> dict[str, bytes]:
    """A model folder uploaded by the trainer's own writer (files, then `_MANIFEST.json`)."""
    from finetune_trainer.core.s3_uri import S3Uri
    from finetune_trainer.core.storage import Storage
    from finetune_trainer.training.artifacts import upload_model

    files = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"w" * 3000, "tok/t.json": b"{}"}
    local = tmp_path / "trained"
    for name, data in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    upload_model(Storage(), local, S3Uri.parse(s3_bucket.uri(prefix)))
    return files


def test_a_trained_model_is_fetched_verified_against_its_manifest(s3_bucket: Any, tmp_path: Path) -> None:
    files = _trained_model(s3_bucket, tmp_path)
    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="out/run-2/model/")["Contents"]
    assert sorted(o["Key"] for o in listed)[0] == "out/run-2/model/_MANIFEST.json"
    dest = tmp_path / "adapter"
    assert main(["fetch", "--uri", s3_bucket.uri("out/run-2/model/"), "--dest", str(dest)]) == 0
    fetched = files_below(dest)
    manifest = json.loads(fetched.pop("_MANIFEST.json"))
    assert fetched == files and sorted(manifest["files"]) == sorted(files)


@pytest.mark.parametrize(
    ("change", "error_code", "named"),
    [
        ("missing", "ModelInvalid", "files of its manifest missing: tok/t.json"),
        ("extra", "ModelInvalid", "files not in its manifest: planted.py"),
        ("resized", "ModelInvalid", "files of another size than its manifest says: adapter_config.json"),
        # the same size, other bytes: read twice, then refused naming the key (core/integrity.py)
        ("changed", "ObjectCorrupt", "model/adapter_model.safetensors: the object does not match its recorded"),
    ],
)
def test_a_model_that_does_not_match_its_manifest_is_refused(
    s3_bucket: Any, tmp_path: Path, change: str, error_code: str, named: str
) -> None:
    _trained_model(s3_bucket, tmp_path)
    if change == "missing":
        s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="out/run-2/model/tok/t.json")
    elif change == "extra":
        put(s3_bucket, "out/run-2/model/planted.py", b"import os")
    elif change == "resized":
        put(s3_bucket, "out/run-2/model/adapter_config.json", b'{"r": 64}')
    else:  # the same size, other bytes: only the sha256 tells
        put(s3_bucket, "out/run-2/model/adapter_model.safetensors", b"x" * 3000)
    dest = tmp_path / "adapter"
    code = main(["fetch", "--uri", s3_bucket.uri("out/run-2/model/"), "--dest", str(dest)])
    assert code == USER_ERROR_EXIT_CODE
    message = termination(tmp_path)
    assert message["code"] == error_code and named in message["message"], message
    assert s3_bucket.uri("out/run-2/model/") in message["message"]


def test_a_listed_key_that_is_no_safe_path_is_refused_naming_it(s3_bucket: Any, tmp_path: Path) -> None:
    """The local S3 server refuses `..` and `.` keys and folds `//`, but stores a control character verbatim:
    the same refusal (tests/unit/trainer/test_paths.py feeds it the other shapes, as AWS S3 lists them)."""
    put(s3_bucket, "models/base/config.json", b"{}")
    put(s3_bucket, "models/base/tok\x01en.json", b"{}")
    dest = tmp_path / "m"
    code = main(["fetch", "--uri", s3_bucket.uri("models/base/"), "--dest", str(dest)])
    assert code == USER_ERROR_EXIT_CODE
    message = termination(tmp_path)
    assert message["code"] == "UnsafeObjectKey", message
    assert "'models/base/tok\\x01en.json'" in message["message"] and s3_bucket.uri("models/base/") in message["message"]
    assert not dest.exists()  # refused before the first download
