"""`python -m finetune_trainer fetch`: copy folders from object storage to local disk, for a server that reads files.

Why: vLLM's OpenAI server loads a local folder and speaks no S3. Its pod's init container runs this command from
the trainer image, so the model is fetched by the same code (storage.py: boto3, the AWS_* variables, the typed
error classification) that wrote it, and no other tool's image is pulled. Same contract as `train`: one
termination-message line and exit 0, 42 for a user error (a missing bucket or key: `StorageNotFound`; refused
credentials: `StorageAccessDenied`; a malformed URI: `ConfigInvalid`), 1 otherwise (docs/trainer-contract.md
section 8). A restarted init container finds the files it already fetched (the ETag records beside them) and
does not fetch them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.core.s3_uri import S3Uri
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


def fetch(wanted: Sequence[Copy], storage: Storage) -> list[Fetched]:
    """Download each copy in order; nothing under a URI is `StorageNotFound` (storage.py raises it)."""
    done = []
    for copy in wanted:
        started = time.monotonic()
        paths = [p for p in storage.download(copy.uri, copy.dest) if not is_etag_record(p)]
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
