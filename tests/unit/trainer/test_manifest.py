"""The model folder's manifest (core/manifest.py): what the trainer writes and what every reader checks (the real
S3 server's side: tests/trainer/test_fetch.py, tests/serve/test_adapter_fetch.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_trainer.core import manifest
from finetune_trainer.core.errors import ModelInvalid, UnsafeObjectKey

PREFIX = "s3://b/out/run-1/model/"


def _folder(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, list[Path]]:
    folder = tmp_path / "model"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder, sorted(p for p in folder.rglob("*") if p.is_file())


def test_manifest_names_every_file_with_size_and_sha256_and_checks_them(tmp_path: Path) -> None:
    folder, files = _folder(tmp_path, {"adapter_config.json": b"{}", "tok/t.json": b"abc"})
    document = json.loads(manifest.describe(folder, files))
    assert document["version"] == 1 and sorted(document["files"]) == ["adapter_config.json", "tok/t.json"]
    assert document["files"]["tok/t.json"] == {
        "size": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    entries = manifest.parse(manifest.describe(folder, files), PREFIX)
    manifest.check_listing(entries, {"adapter_config.json": 2, "tok/t.json": 3}, PREFIX)
    cases = {
        "extra": ({"adapter_config.json": 2, "tok/t.json": 3, "planted.py": 9}, "not in its manifest: planted.py"),
        "missing": ({"adapter_config.json": 2}, "missing: tok/t.json"),
        "resized": ({"adapter_config.json": 2, "tok/t.json": 4}, "another size than its manifest says: tok/t.json"),
    }
    for listed, message in cases.values():
        with pytest.raises(ModelInvalid, match=message):
            manifest.check_listing(entries, listed, PREFIX)


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b'{"version": 2, "files": {}}',
        b'{"version": 1, "files": []}',
        b'{"version": 1, "files": {"a": {"size": -1, "sha256": "' + b"0" * 64 + b'"}}}',
        b'{"version": 1, "files": {"a": {"size": 1}}}',
    ],
)
def test_a_malformed_manifest_is_model_invalid(document: bytes) -> None:
    with pytest.raises(ModelInvalid, match="malformed manifest"):
        manifest.parse(document, PREFIX)


def test_a_manifest_naming_an_escaping_file_is_refused() -> None:
    document = json.dumps({"version": 1, "files": {"../x": {"size": 1, "sha256": "0" * 64}}}).encode()
    with pytest.raises(UnsafeObjectKey, match=r"'\.\.' segment"):
        manifest.parse(document, PREFIX)
