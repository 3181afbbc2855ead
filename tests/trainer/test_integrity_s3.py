"""Integrity against the real S3 server: recorded checksums, corrupt objects read twice then refused by key,
checkpoints that are complete or invisible, the trainer's exit for a corrupt input (core/integrity.py).

How an object is corrupted here: overwritten in S3 with other (truncated, or same-size) bytes, keeping the
sha256 metadata the original was written with, as a disk or a replication fault below the S3 API would leave
it; or overwritten plainly (no metadata), where only a manifest (the model's, a checkpoint's marker) can tell.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core import integrity
from finetune_trainer.core import storage as storage_module
from finetune_trainer.core.errors import InternalError, ObjectCorrupt
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import INTEGRITY, Storage
from finetune_trainer.training.checkpoints import MARKER, CheckpointStore

from tests.trainer.builders import arithmetic_records, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = pytest.mark.s3

WEIGHTS = bytes(range(256)) * 64  # 16 KiB


def corrupt(s3_bucket: Any, key: str, body: bytes) -> None:
    """Replace the object's bytes, keeping the metadata (its recorded sha256) it was written with."""
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=body, Metadata=head["Metadata"])


def counts() -> tuple[int, int]:
    return INTEGRITY.retried, INTEGRITY.refused


def test_every_upload_records_its_sha256_and_a_download_checks_it(s3_bucket: Any, tmp_path: Path) -> None:
    storage = Storage()
    local = tmp_path / "weights.bin"
    local.write_bytes(WEIGHTS)
    uploaded = storage.upload_file(local, S3Uri.parse(s3_bucket.uri("m/weights.bin")))
    written = storage.write_bytes(S3Uri.parse(s3_bucket.uri("m/config.json")), b"{}", "application/json")
    for result, body in ((uploaded, WEIGHTS), (written, b"{}")):
        head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=result.uri.key)
        assert (
            integrity.recorded_sha256(head["Metadata"])
            == result.sha256
            == integrity.observe_bytes(body, integrity.Expected(len(body), sha256="x")).sha256
        )
        assert storage.expected(result.uri).sha256 == result.sha256
    before = counts()
    paths = storage.download(S3Uri.parse(s3_bucket.uri("m/")), tmp_path / "copy")
    assert sorted(p.name for p in paths) == ["config.json", "weights.bin"]
    assert (tmp_path / "copy" / "weights.bin").read_bytes() == WEIGHTS
    assert counts() == before  # nothing read twice


@pytest.mark.parametrize("body", [WEIGHTS[:1000], WEIGHTS[:-1] + b"!"], ids=["truncated", "same-size"])
def test_a_corrupt_object_is_downloaded_twice_then_refused_naming_the_key(
    s3_bucket: Any, tmp_path: Path, body: bytes
) -> None:
    storage = Storage()
    uri = S3Uri.parse(s3_bucket.uri("data/train.bin"))
    recorded = storage.write_bytes(uri, WEIGHTS).sha256
    corrupt(s3_bucket, uri.key, body)
    retried, refused = counts()
    dest = tmp_path / "d" / "train.bin"
    with pytest.raises(ObjectCorrupt) as raised:
        storage.download_file(uri, dest)
    message = str(raised.value)
    assert message.startswith(f"{uri}: the object does not match its recorded checksum after 2 download(s)")
    # the object itself is shorter in storage (HEAD says so too): its recorded sha256 is what tells
    assert f"recorded {recorded}" in message
    assert counts() == (retried + 1, refused + 1)  # read once more, then refused
    assert list((tmp_path / "d").iterdir()) == []  # no copy, no partial file left
    with pytest.raises(ObjectCorrupt, match=f"{uri}: .* after 2 download"):
        storage.read_bytes(uri)
    assert counts() == (retried + 2, refused + 2)


def test_a_copy_that_differs_once_is_read_again_and_accepted(
    s3_bucket: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault that heals between the two downloads (as a transfer that went wrong once): the second copy lands."""
    storage = Storage()
    uri = S3Uri.parse(s3_bucket.uri("models/base/model.safetensors"))
    storage.write_bytes(uri, WEIGHTS)
    corrupt(s3_bucket, uri.key, WEIGHTS[:512])

    class Heal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "once more" in record.getMessage():
                corrupt(s3_bucket, uri.key, WEIGHTS)

    handler = Heal()
    logging.getLogger(storage_module.__name__).addHandler(handler)
    retried, refused = counts()
    try:
        path = storage.download_file(uri, tmp_path / "model.safetensors")
    finally:
        logging.getLogger(storage_module.__name__).removeHandler(handler)
    assert path.read_bytes() == WEIGHTS
    assert counts() == (retried + 1, refused)


def test_an_object_without_a_record_is_checked_by_its_size_and_etag(s3_bucket: Any, tmp_path: Path) -> None:
    """A user's own object (one PUT, no metadata): the ETag the server gives is its MD5, checked on download."""
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/user.jsonl", Body=WEIGHTS)
    storage = Storage()
    uri = S3Uri.parse(s3_bucket.uri("data/user.jsonl"))
    expected = storage.expected(uri)
    assert expected.sha256 is None and expected.size == len(WEIGHTS)
    assert expected.md5 == integrity.observe_bytes(WEIGHTS, integrity.Expected(len(WEIGHTS), md5="x")).md5
    assert storage.download_file(uri, tmp_path / "user.jsonl").read_bytes() == WEIGHTS


def test_an_upload_the_server_did_not_store_whole_is_made_again_then_fails(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored size is checked after each upload (HEAD); a store that keeps losing bytes fails retryably."""
    storage = Storage()
    local = tmp_path / "w.bin"
    local.write_bytes(WEIGHTS)
    uri = S3Uri.parse(s3_bucket.uri("out/w.bin"))
    real_head = Storage._head
    heads: list[str] = []

    def short_head(self: Storage, target: S3Uri) -> dict[str, Any]:
        heads.append(target.key)
        corrupt(s3_bucket, target.key, WEIGHTS[:10])  # the server lost bytes right after storing them
        return real_head(self, target)

    monkeypatch.setattr(Storage, "_head", short_head)
    with pytest.raises(InternalError, match=f"uploading {uri}: the server stored 10 bytes of .* after 2 uploads"):
        storage.upload_file(local, uri)
    assert heads == [uri.key, uri.key]


def _checkpoint(tmp_path: Path, step: int) -> Path:
    local = tmp_path / f"checkpoint-{step}"
    local.mkdir()
    (local / "model.safetensors").write_bytes(WEIGHTS + bytes([step]))
    (local / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (local / "rng_state.pth").write_bytes(b"rng")
    return local


def test_a_corrupt_checkpoint_falls_back_to_the_previous_complete_one(s3_bucket: Any, tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), S3Uri.parse(s3_bucket.uri("out/run-1/")), keep=3)
    for step in (10, 20):
        store.upload(_checkpoint(tmp_path, step), step, '{"resolved": true}')
    marker = json.loads(store.storage.read_bytes(store.uri(20).join(MARKER)))
    assert marker["step"] == 20 and sorted(marker["files"]) == [
        "model.safetensors",
        "rng_state.pth",
        "trainer_config.json",
        "trainer_state.json",
    ]
    assert marker["files"]["trainer_state.json"]["size"] == len(json.dumps({"global_step": 20}))

    # checkpoint-20's weights changed in storage (same size), their metadata kept: refused after a second read
    corrupt(s3_bucket, store.uri(20).key + "model.safetensors", WEIGHTS[::-1] + b"!")
    resumed = store.fetch_latest(tmp_path / "resume")
    assert resumed == tmp_path / "resume" / "checkpoint-10"
    assert (resumed / "model.safetensors").read_bytes() == WEIGHTS + bytes([10])
    assert not (resumed / MARKER).exists() and not (tmp_path / "resume" / "checkpoint-20").exists()

    # checkpoint-10's state rewritten plainly (no metadata): only its marker's sha256 tells; nothing is left
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name, Key=store.uri(10).key + "trainer_state.json", Body=b'{"global_step": 99}'
    )
    with pytest.raises(ObjectCorrupt) as raised:
        store.fetch_latest(tmp_path / "again")
    message = str(raised.value)
    assert message.startswith(f"no checkpoint under {store.root} can be resumed from")
    assert f"{store.uri(20)}model.safetensors" in message and f"{store.uri(10)}trainer_state.json" in message


def test_a_checkpoint_missing_a_file_or_truncated_against_its_marker_is_skipped(s3_bucket: Any, tmp_path: Path) -> None:
    store = CheckpointStore(Storage(), S3Uri.parse(s3_bucket.uri("out/run-1/")), keep=3)
    for step in (10, 20):
        store.upload(_checkpoint(tmp_path, step), step, "{}")
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=store.uri(20).key + "model.safetensors")
    resumed = store.fetch_latest(tmp_path / "first")
    assert resumed is not None and resumed.name == "checkpoint-10"
    truncated = store.uri(10).key + "trainer_state.json"  # truncated in storage: its size differs from the marker's
    corrupt(s3_bucket, truncated, b"{")
    with pytest.raises(ObjectCorrupt) as raised:
        store.fetch_latest(tmp_path / "resume")
    assert f"{store.uri(20)}model.safetensors is missing" in str(raised.value)
    assert f"s3://{s3_bucket.name}/{truncated} has 1 bytes, recorded" in str(raised.value)


def test_a_checkpoint_upload_cut_half_way_is_invisible(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload of checkpoint-20 dies after its first object (the pod killed): no marker, never resumed."""
    store = CheckpointStore(Storage(), S3Uri.parse(s3_bucket.uri("out/run-1/")), keep=3)
    store.upload(_checkpoint(tmp_path, 10), 10, "{}")
    upload_file = Storage.upload_file
    done: list[str] = []

    def killed_after_one(self: Storage, path: Path, uri: S3Uri) -> storage_module.Uploaded:
        if done:
            raise KeyboardInterrupt("the pod was killed")  # not an Exception: nothing of the trainer catches it
        done.append(uri.key)
        return upload_file(self, path, uri)

    monkeypatch.setattr(Storage, "upload_file", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        store.upload(_checkpoint(tmp_path, 20), 20, "{}")
    monkeypatch.setattr(Storage, "upload_file", upload_file)
    index = store.index()
    assert index.steps == {10, 20} and index.complete == {10}
    resumed = store.fetch_latest(tmp_path / "resume")
    assert resumed is not None and resumed.name == "checkpoint-10"


def test_a_republished_model_has_no_manifest_while_its_files_are_replaced(s3_bucket: Any, tmp_path: Path) -> None:
    from finetune_trainer.training.artifacts import upload_model

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(WEIGHTS)
    model = S3Uri.parse(s3_bucket.uri("out/run-1/model/"))
    upload_model(Storage(), folder, model)
    seen: list[bool] = []
    upload_file = Storage.upload_file

    def watching(self: Storage, path: Path, uri: S3Uri) -> storage_module.Uploaded:
        seen.append(self.exists(model.join("_MANIFEST.json")))
        return upload_file(self, path, uri)

    (folder / "adapter_model.safetensors").write_bytes(WEIGHTS[::-1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Storage, "upload_file", watching)
        upload_model(Storage(), folder, model)
    assert seen == [False]  # the old manifest was gone before the first file was replaced
    document = json.loads(Storage().read_bytes(model.join("_MANIFEST.json")))
    assert document["files"]["adapter_model.safetensors"]["sha256"] == integrity.sha256_file(
        folder / "adapter_model.safetensors"
    )


def test_the_trainer_stops_on_a_corrupt_data_object_with_its_own_code(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Callable[[dict[str, Any]], TrainerResult]
) -> None:
    """A data file uploaded with its sha256 (as the Files API does), truncated in storage: exit 42 ObjectCorrupt,
    naming the key, before any training."""
    records = "".join(json.dumps(r) + "\n" for r in arithmetic_records(40)).encode()
    train = S3Uri.parse(s3_bucket.uri("data/train.jsonl"))
    Storage().write_bytes(train, records, "application/x-ndjson")
    corrupt(s3_bucket, train.key, records[: len(records) // 2])
    result = run_trainer(trainer_config(s3_bucket.name, tiny_llama_uri, str(train)))
    assert result.exit_code == 42, result.termination
    assert result.termination["code"] == "ObjectCorrupt", result.termination
    assert str(train) in result.termination["message"] and "after 2 download(s)" in result.termination["message"]
