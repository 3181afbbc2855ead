"""`python -m finetune_trainer fetch`: copy folders from object storage to local disk, for a server that reads files.

Why: vLLM's OpenAI server loads a local folder and speaks no S3. Its pod's init container runs this command from
the trainer image, so the model is fetched by the same code (storage.py: boto3, the AWS_* variables, the typed
error classification) that wrote it, and no other tool's image is pulled. Same contract as `train`: one
termination-message line and exit 0, 42 for a user error (a missing bucket or key: `StorageNotFound`; refused
credentials: `StorageAccessDenied`; a malformed URI: `ConfigInvalid`), 1 otherwise (docs/trainer-contract.md
section 8). A restarted init container finds the files it already fetched (the ETag records beside them) and
does not fetch them again.

A folder with a `_MANIFEST.json` (every model folder the trainer writes: core/manifest.py) is verified against
it: its listing must name exactly the manifest's files with their sizes before anything is downloaded, and each
downloaded file must have its sha256 (a copy that differs is downloaded once more, then `ObjectCorrupt`, 42,
naming the key: core/integrity.py); a listing that differs is `ModelInvalid` (42). `download_model` is that step,
shared with the adapters sidecar (which requires the manifest) and our own server's loader. Every key lands through
`s3_uri.local_path`, which refuses keys that would leave the destination (`UnsafeObjectKey`, 42).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer.core import manifest
from finetune_trainer.core.errors import ConfigInvalid, ModelInvalid, StorageNotFound
from finetune_trainer.core.s3_uri import S3Uri, relative_key
from finetune_trainer.core.storage import Storage, is_etag_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Copy:
    """One folder (or file) to fetch: everything under `uri` lands below `dest`, keeping relative paths."""

    uri: S3Uri
    dest: Path


@dataclass(frozen=True)
class Fetched:
    """What one copy left on disk."""

    copy: Copy
    files: int
    bytes: int


def copies(uris: Sequence[str], dests: Sequence[str]) -> list[Copy]:
    """Pair the i-th `--uri` with the i-th `--dest`; an unequal count or a bad URI is a config error."""
    if not uris or len(uris) != len(dests):
        raise ConfigInvalid(f"fetch needs one --dest for each --uri (got {len(uris)} --uri, {len(dests)} --dest)")
    return [Copy(S3Uri.parse(uri), Path(dest)) for uri, dest in zip(uris, dests, strict=True)]


def download_model(storage: Storage, uri: S3Uri, dest: Path, *, require_manifest: bool) -> list[Path]:
    """Download what `uri` names into `dest`, verified against the folder's manifest when it has one.

    `require_manifest`: a folder without one is `ModelInvalid` (the adapters sidecar: it serves only models
    the trainer wrote). Nothing under `uri` is `StorageNotFound`.
    """
    objects = storage.list(uri)
    if not objects:
        raise StorageNotFound(f"nothing found at {uri}")
    folder = S3Uri(uri.bucket, uri.prefix)
    record = next((o for o in objects if o.uri.key == folder.prefix + manifest.MANIFEST), None)
    if record is None:
        if require_manifest:
            raise ModelInvalid(
                f"{folder}: no {manifest.MANIFEST} (the trainer writes one after every model folder; "
                "a folder without it was not written by the trainer or is still being uploaded)"
            )
        return storage.download_listed(objects, uri, dest)
    files = manifest.parse(storage.read_bytes(record.uri), str(folder))
    listed = {relative_key(o.uri, uri): o for o in objects if o is not record}
    manifest.check_listing(files, {name: o.size for name, o in listed.items()}, str(folder))
    # each file is checked against the manifest's sha256 as it lands (downloaded once more, then ObjectCorrupt)
    return storage.download_listed(objects, uri, dest, {o.uri.key: files[name].sha256 for name, o in listed.items()})


def fetch(wanted: Sequence[Copy], storage: Storage) -> list[Fetched]:
    """Download each copy in order, verified against its manifest when it has one (`download_model`)."""
    done = []
    for copy in wanted:
        started = time.monotonic()
        downloaded = download_model(storage, copy.uri, copy.dest, require_manifest=False)
        paths = [p for p in downloaded if not is_etag_record(p)]
        size = sum(p.stat().st_size for p in paths)
        log.info(
            "fetched %s -> %s: %d file(s), %.1f MiB in %.1fs",
            copy.uri,
            copy.dest,
            len(paths),
            size / 2**20,
            time.monotonic() - started,
        )
        done.append(Fetched(copy, len(paths), size))
    return done


def summary(done: Sequence[Fetched]) -> str:
    """The termination message of a successful fetch: what went where."""
    parts = [f"{d.copy.uri} -> {d.copy.dest} ({d.files} file(s), {d.bytes / 2**20:.1f} MiB)" for d in done]
    return "fetched " + "; ".join(parts)
