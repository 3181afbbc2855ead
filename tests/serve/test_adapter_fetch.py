"""The adapters sidecar's fetch against the real S3 server: only a trained model folder that matches the manifest
the trainer wrote beside it lands in the pod, and a folder already in the pod is used only when the sidecar
verified it (never because it exists: another tenant's files could sit there)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.s3

MODEL = "out/run-1/model/"
FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"w" * 4096, "tok/t.json": b"{}"}


def _upload(s3_bucket: Any, tmp_path: Path) -> str:
    """A model folder written by the trainer's own writer (files, then `_MANIFEST.json`); returns its URI."""
    from finetune_trainer.core.s3_uri import S3Uri
    from finetune_trainer.core.storage import Storage
    from finetune_trainer.training.artifacts import upload_model

    local = tmp_path / "trained"
    for name, data in FILES.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    upload_model(Storage(), local, S3Uri.parse(s3_bucket.uri(MODEL)))
    return str(s3_bucket.uri(MODEL))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".s3-etag") and p.name not in ("_MANIFEST.json", ".fto-verified")
    }


def test_a_verified_adapter_lands_with_the_sidecars_mark(s3_bucket: Any, tmp_path: Path) -> None:
    from finetune_trainer.serving.adapters.cli import VERIFIED, fetch_adapter

    uri = _upload(s3_bucket, tmp_path)
    folder = tmp_path / "adapters" / "bot-1234abcd" / "run-1"
    fetch_adapter(uri, folder)
    assert _files(folder) == FILES and (folder / VERIFIED).read_text() == uri
    assert [p.name for p in folder.parent.iterdir()] == ["run-1"]  # no staging folder left behind


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("no manifest", "no _MANIFEST.json"),
        ("missing", "files of its manifest missing: tok/t.json"),
        ("extra", "files not in its manifest: planted/run.py"),
        # the same size, other bytes: read twice, then ObjectCorrupt naming the key (core/integrity.py)
        ("changed", "model/adapter_model.safetensors: the object does not match its recorded checksum"),
    ],
)
def test_a_folder_that_does_not_match_its_manifest_is_refused(
    s3_bucket: Any, tmp_path: Path, change: str, named: str
) -> None:
    from finetune_trainer.core.errors import ModelInvalid, ObjectCorrupt
    from finetune_trainer.serving.adapters.cli import fetch_adapter

    uri = _upload(s3_bucket, tmp_path)
    key = {
        "no manifest": MODEL + "_MANIFEST.json",
        "missing": MODEL + "tok/t.json",
        "extra": MODEL + "planted/run.py",
        "changed": MODEL + "adapter_model.safetensors",
    }[change]
    if change in ("no manifest", "missing"):
        s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=key)
    else:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=b"x" * 4096)
    folder = tmp_path / "adapters" / "bot-1234abcd" / "run-1"
    with pytest.raises(ObjectCorrupt if change == "changed" else ModelInvalid) as refused:
        fetch_adapter(uri, folder)
    assert named in str(refused.value) and uri in str(refused.value)
    assert not folder.exists() and list(folder.parent.iterdir()) == []  # nothing half-copied is left


def test_a_folder_already_in_the_pod_is_used_only_when_the_sidecar_verified_it(s3_bucket: Any, tmp_path: Path) -> None:
    from finetune_trainer.serving.adapters.cli import VERIFIED, fetch_adapter

    uri = _upload(s3_bucket, tmp_path)
    folder = tmp_path / "adapters" / "bot-1234abcd" / "run-1"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"planted": true}')  # e.g. another tenant's escaped key
    fetch_adapter(uri, folder)
    assert _files(folder) == FILES
    stamp = (folder / "adapter_model.safetensors").stat().st_mtime_ns
    fetch_adapter(uri, folder)  # verified from this URI: used as it is
    assert (folder / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    (folder / VERIFIED).write_text("s3://other/run-1/model/")  # verified from another URI: fetched again
    fetch_adapter(uri, folder)
    assert (folder / VERIFIED).read_text() == uri
    elsewhere = tmp_path / "elsewhere"  # a link in its place, even to a verified folder: replaced by a real one
    shutil.move(folder, elsewhere)
    folder.symlink_to(elsewhere)
    fetch_adapter(uri, folder)
    assert not folder.is_symlink() and _files(folder) == FILES and _files(elsewhere) == FILES


def test_a_local_path_is_never_copied(tmp_path: Path) -> None:
    from finetune_trainer.serving.adapters.cli import fetch_adapter

    other_tenant = tmp_path / "adapters" / "team-b-bot-5678abcd" / "run-1"
    other_tenant.mkdir(parents=True)
    (other_tenant / "adapter_config.json").write_text("{}")
    folder = tmp_path / "adapters" / "bot-1234abcd" / "run-1"
    with pytest.raises(ValueError, match="only s3://"):
        fetch_adapter(str(other_tenant), folder)
    assert not folder.exists()
