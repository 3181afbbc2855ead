"""core/integrity.py: what a copy of an object must be, and the words for how it differs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from finetune_trainer.core import integrity
from finetune_trainer.core.errors import USER_ERROR_CODES, USER_ERROR_EXIT_CODE, ObjectCorrupt

DATA = b"the bytes of one object\n" * 40
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA, usedforsecurity=False).hexdigest()


@pytest.mark.parametrize(
    ("etag", "encryption", "customer_key", "md5"),
    [
        (f'"{MD5}"', None, False, MD5),  # one PUT, unencrypted: the ETag is the MD5
        (f'"{MD5.upper()}"', "AES256", False, MD5),  # SSE-S3 keeps the MD5 ETag
        (f'"{MD5}-3"', None, False, None),  # multipart: an MD5 of the parts' MD5s
        (f'"{MD5}"', "aws:kms", False, None),  # KMS: the ETag is no MD5 of the bytes
        (f'"{MD5}"', "aws:kms:dsse", False, None),
        (f'"{MD5}"', None, True, None),  # SSE-C
        ('"not-an-md5"', None, False, None),
        ("", None, False, None),
    ],
)
def test_only_an_etag_that_is_an_md5_is_checked_as_one(
    etag: str, encryption: str | None, customer_key: bool, md5: str | None
) -> None:
    assert integrity.plain_md5(etag, encryption, customer_key) == md5


def test_expected_from_a_head_answer() -> None:
    head = {"ContentLength": len(DATA), "ETag": f'"{MD5}"', "Metadata": {"FTO-SHA256": SHA.upper()}}
    assert integrity.expected_from_head(head) == integrity.Expected(len(DATA), SHA)  # the sha256 makes MD5 moot
    unrecorded = {"ContentLength": len(DATA), "ETag": f'"{MD5}"'}
    assert integrity.expected_from_head(unrecorded) == integrity.Expected(len(DATA), md5=MD5)
    assert integrity.expected_from_head(unrecorded, etag_md5=False) == integrity.Expected(len(DATA))  # switched off
    other = "a" * 64
    assert integrity.expected_from_head(head, other).sha256 == other  # a manifest's record wins
    bare = integrity.expected_from_head({"ContentLength": 3, "ETag": '"x-2"', "Metadata": {"fto-sha256": "short"}})
    assert bare == integrity.Expected(3) and bare.checks == "size"
    assert integrity.Expected(3, SHA, MD5).checks == "size, sha256, md5"


def test_a_matching_copy_has_no_problems(tmp_path: Path) -> None:
    path = tmp_path / "copy"
    path.write_bytes(DATA)
    expected = integrity.Expected(len(DATA), SHA, MD5)
    assert integrity.problems(expected, integrity.observe_file(path, expected)) == []
    assert integrity.problems(expected, integrity.observe_bytes(DATA, expected)) == []
    assert integrity.sha256_file(path) == SHA


def test_a_truncated_copy_is_named_truncated_without_hashing(tmp_path: Path) -> None:
    path = tmp_path / "copy"
    path.write_bytes(DATA[:100])
    expected = integrity.Expected(len(DATA), SHA, MD5)
    observed = integrity.observe_file(path, expected)
    assert observed == integrity.Observed(100)  # the wrong size says enough; nothing was hashed
    assert integrity.problems(expected, observed) == [f"truncated: 100 bytes, the object has {len(DATA)}"]
    longer = integrity.observe_bytes(DATA + b"x", expected)
    assert integrity.problems(expected, longer)[0].startswith(f"too long: {len(DATA) + 1} bytes")


def test_the_same_size_with_other_bytes_is_caught_by_each_recorded_digest() -> None:
    changed = DATA[:-1] + b"?"
    both = integrity.Expected(len(DATA), SHA, MD5)
    found = integrity.problems(both, integrity.observe_bytes(changed, both))
    assert len(found) == 2 and found[0].endswith(f"recorded {SHA}") and found[1].endswith(f"the ETag says {MD5}")
    size_only = integrity.Expected(len(DATA))
    assert integrity.problems(size_only, integrity.observe_bytes(changed, size_only)) == []  # nothing recorded


def test_the_corrupt_message_names_the_key_and_the_reads() -> None:
    message = integrity.corrupt_message("s3://bucket/data/train.jsonl", ["truncated: 5 bytes, the object has 9"], 2)
    assert message.startswith("s3://bucket/data/train.jsonl: the object does not match its recorded checksum")
    assert "after 2 download(s)" in message and "truncated: 5 bytes" in message
    error = ObjectCorrupt(message)
    assert error.exit_code == USER_ERROR_EXIT_CODE and error.code in USER_ERROR_CODES


def test_a_checkpoint_marker_names_its_files() -> None:
    document = {"step": 20, "files": {"model.safetensors": {"size": 9, "sha256": SHA.upper()}}}
    entries = integrity.entries_from_marker(document, "s3://b/ckpt/_COMPLETE")
    assert entries == {"model.safetensors": (9, SHA)}
    assert integrity.entries_from_marker({"step": 10}, "m") == {}  # an older marker: objects' metadata only
    for bad in ([], {"files": []}, {"files": {"a": {"size": -1, "sha256": SHA}}}, {"files": {"a": {"size": 1}}}):
        with pytest.raises(ValueError, match="s3://b/m"):
            integrity.entries_from_marker(bad, "s3://b/m")


def test_a_listing_that_lacks_a_recorded_file_or_resizes_it() -> None:
    entries = {"a.bin": (3, SHA), "b.bin": (4, SHA), "c.bin": (5, SHA)}
    listed = {"a.bin": 3, "b.bin": 2, "rng_state_1.pth": 7}
    assert integrity.missing_from_listing(entries, listed) == ["b.bin has 2 bytes, recorded 4", "c.bin is missing"]
    assert integrity.missing_from_listing(entries, {"a.bin": 3, "b.bin": 4, "c.bin": 5, "x": 1}) == []
    assert integrity.missing_from_listing(entries, listed, "s3://b/c/")[1] == "s3://b/c/c.bin is missing"


def test_the_etag_md5_check_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.core.errors import ConfigInvalid
    from finetune_trainer.core.storage import ETAG_MD5_ENV, etag_md5

    monkeypatch.delenv(ETAG_MD5_ENV, raising=False)
    assert etag_md5()
    monkeypatch.setenv(ETAG_MD5_ENV, "Off")
    assert not etag_md5()
    monkeypatch.setenv(ETAG_MD5_ENV, "false")
    with pytest.raises(ConfigInvalid, match="FTO_S3_ETAG_MD5: must be on or off, got 'false'"):
        etag_md5()
