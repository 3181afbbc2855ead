"""The model folder's manifest: `run-N/model/_MANIFEST.json`, every file's name, size and sha256.

Why: the trainer writes the model folder, and the servers (the adapters sidecar of a shared server, the vLLM
pod's `fetch`, our own server's loader) copy it back from object storage, where anything else able to write
the prefix can add, drop or change objects, and a listing alone cannot tell a finished model from one still
being uploaded. The trainer writes the manifest last, after every file of the folder, from the files it
uploaded; a reader compares the listing with it before downloading anything (an extra, missing or
differently sized object refuses the folder: `ModelInvalid`, exit 42, naming the folder and the files) and
every downloaded file's sha256 as it lands (core/integrity.py: a copy that differs is downloaded once more, then
`ObjectCorrupt`, exit 42, naming the key). What it does not do: stop a writer of the prefix
who rewrites the manifest too; keeping other tenants out of a prefix is the storage's IAM (docs/security.md).
Pure: building reads local files, checking takes the listing and the local folder; storage I/O is `fetch`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.core.errors import ModelInvalid
from finetune_trainer.core.integrity import sha256_file
from finetune_trainer.core.paths import relative_path

MANIFEST = "_MANIFEST.json"
"""The manifest's name inside the model folder."""

VERSION = 1


@dataclass(frozen=True)
class FileEntry:
    """One file of a model folder as the trainer wrote it."""

    size: int
    sha256: str


def describe(folder: Path, files: Sequence[Path]) -> bytes:
    """The manifest of `files` (below `folder`, as they are uploaded), as the JSON document written to storage.

    A file of the folder already named `_MANIFEST.json` is left out: the manifest describes the others.
    """
    entries = {}
    for path in files:
        name = path.relative_to(folder).as_posix()
        if name == MANIFEST:
            continue
        entries[name] = FileEntry(path.stat().st_size, sha256_file(path))
    return render(entries)


def render(entries: Mapping[str, FileEntry]) -> bytes:
    """The manifest document naming `entries` (relative name -> size and sha256), as written to storage: for a
    writer that has the sha256s already (the uploads computed them), so no file is read twice."""
    files = {name: {"size": e.size, "sha256": e.sha256} for name, e in sorted(entries.items())}
    return json.dumps({"version": VERSION, "files": files}, indent=2).encode()


def parse(data: bytes, where: str) -> dict[str, FileEntry]:
    """The files a manifest names; a malformed manifest (or an unsafe name in it) is ModelInvalid naming `where`."""
    try:
        document: Any = json.loads(data)
        if not isinstance(document, dict) or document.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} manifest")
        files = document["files"]
        if not isinstance(files, dict):
            raise ValueError("'files' must be an object")
        entries = {}
        for name, entry in files.items():
            relative_path(name, key=name, prefix=where)  # a manifest names only safe relative paths
            size, sha = entry["size"], entry["sha256"]
            if not isinstance(size, int) or size < 0 or not isinstance(sha, str) or len(sha) != 64:
                raise ValueError(f"files[{name!r}]: needs a size (bytes) and a sha256 (64 hex digits)")
            entries[name] = FileEntry(size, sha.lower())
    except (ValueError, KeyError, TypeError) as error:
        raise ModelInvalid(f"{where}{MANIFEST}: malformed manifest ({error})") from None
    return entries


def check_listing(manifest: Mapping[str, FileEntry], listed: Mapping[str, int], where: str) -> None:
    """The listing (relative name -> size, the manifest itself left out) names exactly the manifest's files,
    each of its size: else ModelInvalid naming the extra, missing and resized files."""
    extra = sorted(set(listed) - set(manifest))
    missing = sorted(set(manifest) - set(listed))
    resized = sorted(n for n in set(listed) & set(manifest) if listed[n] != manifest[n].size)
    problems = []
    if extra:
        problems.append(f"files not in its manifest: {', '.join(extra)}")
    if missing:
        problems.append(f"files of its manifest missing: {', '.join(missing)}")
    if resized:
        problems.append(f"files of another size than its manifest says: {', '.join(resized)}")
    if problems:
        raise ModelInvalid(f"{where} does not match its {MANIFEST}: {'; '.join(problems)}")
