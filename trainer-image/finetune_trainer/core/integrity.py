"""What an object's bytes must be, and whether a downloaded copy is them: size, sha256 and S3's MD5 ETag.

Why: a weights file or a checkpoint truncated in transfer, or changed in storage, used to be found (if at all) by
a confusing error deep in loading. Every object the trainer writes records the sha256 of its bytes as S3 user
metadata (`x-amz-meta-fto-sha256`, `SHA256_METADATA`), in the same request that writes it, so the record can
never describe another version of the object; the folders the trainer publishes (the model's `_MANIFEST.json`,
a checkpoint's `_COMPLETE`) also name every file's size and sha256, written last. A reader compares its copy
with whatever is recorded:
- the size, always (the listing's or HEAD's Content-Length): catches a truncated transfer of any object;
- the sha256, when the trainer wrote the object (its metadata) or a manifest names it: catches any change;
- the MD5 that S3 reports as the ETag of an object written in one PUT and not encrypted with KMS or a
  customer key (AWS documents the ETag as the MD5 of the bytes only then; a multipart ETag ends `-<parts>`):
  catches corruption in transfer of a user's own objects (data, base models), which have no other record.

Pure: what to expect is read from a HEAD/GET answer (a mapping), the observed digests from bytes or a file;
storage.py does the I/O and the retry (one more download, then `ObjectCorrupt` naming the bucket and key).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHA256_METADATA = "fto-sha256"
"""The user-metadata key (`x-amz-meta-fto-sha256`) holding the sha256 (hex) of an object the trainer wrote."""

RETRIES = 1
"""Downloads of an object that did not match its record, repeated before it is `ObjectCorrupt`: one, so a
transfer that went wrong once is ridden out and a stored object that is really wrong fails within seconds."""

_HEX_MD5 = re.compile(r"^[0-9a-f]{32}$")
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 8 * 2**20


@dataclass(frozen=True)
class Expected:
    """What a copy of one object must be: its size, and the digests known for it (None: nothing recorded)."""

    size: int
    sha256: str | None = None
    md5: str | None = None

    @property
    def checks(self) -> str:
        """The checks this record allows, for log lines and messages ("size, sha256")."""
        return ", ".join(name for name, value in (("size", True), ("sha256", self.sha256), ("md5", self.md5)) if value)


@dataclass(frozen=True)
class Observed:
    """What a copy is: its size and the digests that were asked for."""

    size: int
    sha256: str | None = None
    md5: str | None = None


def plain_md5(etag: str, encryption: str | None = None, customer_key: bool = False) -> str | None:
    """The MD5 an ETag stands for, or None when it stands for none: a multipart ETag (`<hex>-<parts>`), an
    object encrypted with KMS (`aws:kms`, `aws:kms:dsse`) or a customer key (SSE-C), or no 32-hex-digit value."""
    value = etag.strip('"').lower()
    if customer_key or (encryption or "").startswith("aws:kms") or not _HEX_MD5.match(value):
        return None
    return value


def recorded_sha256(metadata: Mapping[str, str] | None) -> str | None:
    """The sha256 the trainer recorded in an object's user metadata (None: none, or not 64 hex digits)."""
    value = {k.lower(): v for k, v in (metadata or {}).items()}.get(SHA256_METADATA, "").strip().lower()
    return value if _HEX_SHA256.match(value) else None


def expected_from_head(head: Mapping[str, Any], sha256: str | None = None, etag_md5: bool = True) -> Expected:
    """What a copy must be, from a HEAD (or GET) answer as boto3 returns it. `sha256`: a manifest's record,
    which wins over the object's own metadata (it was written after the object, by whoever published the folder).
    The ETag's MD5 is asked for only when no sha256 is known (it would tell nothing more, for another read's
    cost), and never with `etag_md5` False: for an S3-compatible store whose ETags are not MD5s of the bytes.
    """
    sha = (sha256.lower() if sha256 else None) or recorded_sha256(head.get("Metadata"))
    md5 = plain_md5(
        str(head.get("ETag") or ""), head.get("ServerSideEncryption"), bool(head.get("SSECustomerAlgorithm"))
    )
    return Expected(size=int(head.get("ContentLength") or 0), sha256=sha, md5=None if sha or not etag_md5 else md5)


def observe_bytes(data: bytes, expected: Expected) -> Observed:
    """The size of `data` and the digests `expected` asks for."""
    return Observed(
        len(data),
        hashlib.sha256(data).hexdigest() if expected.sha256 else None,
        hashlib.md5(data, usedforsecurity=False).hexdigest() if expected.md5 else None,
    )


def observe_file(path: Path, expected: Expected) -> Observed:
    """The size of the file at `path` and the digests `expected` asks for, in one read of the file (none when its
    size is already wrong: the copy is refused either way)."""
    size = path.stat().st_size
    if size != expected.size or not (expected.sha256 or expected.md5):
        return Observed(size)
    sha = hashlib.sha256() if expected.sha256 else None
    md5 = hashlib.md5(usedforsecurity=False) if expected.md5 else None
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            if sha is not None:
                sha.update(chunk)
            if md5 is not None:
                md5.update(chunk)
    return Observed(size, sha.hexdigest() if sha else None, md5.hexdigest() if md5 else None)


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a local file: what an upload records."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def problems(expected: Expected, observed: Observed) -> list[str]:
    """How the copy differs from the record, in words (empty: it is the object)."""
    found = []
    if observed.size != expected.size:
        kind = "truncated" if observed.size < expected.size else "too long"
        found.append(f"{kind}: {observed.size} bytes, the object has {expected.size}")
        return found  # the digests of a copy of the wrong size say nothing more
    if expected.sha256 and observed.sha256 != expected.sha256:
        found.append(f"sha256 {observed.sha256}, recorded {expected.sha256}")
    if expected.md5 and observed.md5 != expected.md5:
        found.append(f"md5 {observed.md5}, the ETag says {expected.md5}")
    return found


def corrupt_message(uri: str, found: list[str], attempts: int) -> str:
    """The message of `ObjectCorrupt`: the object's bucket and key, what differed, and how often it was read."""
    return (
        f"{uri}: the object does not match its recorded checksum after {attempts} download(s) ({'; '.join(found)}); "
        "it is corrupt or truncated in storage: upload it again (for a checkpoint the trainer falls back to the "
        "previous complete one)"
    )


def entries_from_marker(document: Any, where: str) -> dict[str, tuple[int, str]]:
    """The files a checkpoint's `_COMPLETE` marker names (`{"files": {name: {"size", "sha256"}}}`), as name ->
    (size, sha256). An older marker without `files` names none (its objects' metadata is still checked); a
    malformed one raises ValueError naming `where`."""
    if not isinstance(document, dict):
        raise ValueError(f"{where}: the marker is not a JSON object")
    files = document.get("files")
    if files is None:
        return {}
    if not isinstance(files, dict):
        raise ValueError(f"{where}: 'files' must be an object")
    entries = {}
    for name, entry in files.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(size, int) or size < 0 or not isinstance(sha, str) or not _HEX_SHA256.match(sha.lower()):
            raise ValueError(f"{where}: files[{name!r}] needs a size and a sha256 (64 hex digits)")
        entries[str(name)] = (size, sha.lower())
    return entries


def missing_from_listing(
    entries: Mapping[str, tuple[int, str]], listed: Mapping[str, int], prefix: str = ""
) -> list[str]:
    """The recorded files the listing (relative name -> size) lacks or lists with another size, in words, each
    named `prefix` + name (the folder's URI: the message names the object's bucket and key)."""
    found = []
    for name, (size, _) in sorted(entries.items()):
        if name not in listed:
            found.append(f"{prefix}{name} is missing")
        elif listed[name] != size:
            found.append(f"{prefix}{name} has {listed[name]} bytes, recorded {size}")
    return found
