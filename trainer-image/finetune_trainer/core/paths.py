"""Safe local paths for object keys: the one check between a key someone else wrote and a file on our disk.

Why: an object key is a string, not a path. S3 stores `run-1/model/../../other/x`, `run-1/model//etc/passwd` or
`run-1/model/./x` verbatim and lists them verbatim, and a key joined onto a download folder as it is would land
outside that folder (another tenant's adapter folder in a shared server pod, the trainer's temporary folder, an
absolute path). So every key below a listed prefix becomes a relative path only through `relative_path`, which
refuses any shape that could mean something else on a file system, and every such path reaches the disk only
through `inside`, which checks after resolving (symbolic links included) that it stays in its folder. A refused
key is `UnsafeObjectKey` (a user error, exit 42) naming the key and the prefix: never skipped, because a model
or data set with a file left out is not the one its owner wrote.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from finetune_trainer.core.errors import UnsafeObjectKey

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refusal(relative: str) -> str | None:
    """Why `relative` (the part of a key below its prefix) is no safe relative path, or None when it is."""
    if not relative:
        return "the key names the prefix itself, not a file below it"
    if "\x00" in relative:
        return "it holds a NUL character"
    if _CONTROL.search(relative):
        return "it holds a control character"
    if "\\" in relative:
        return "it holds a backslash (a Windows path separator)"
    if relative.startswith("/"):
        return "it is absolute below the prefix (starts with '/')"
    segments = relative.split("/")
    if "" in segments:
        return "it has an empty segment ('//')"
    if "." in segments:
        return "it has a '.' segment"
    if ".." in segments:
        return "it has a '..' segment"
    return None


def relative_path(relative: str, *, key: str, prefix: str) -> PurePosixPath:
    """`relative` (the part of `key` below `prefix`) as a path that can only name something below a folder.

    Refused, as `UnsafeObjectKey` naming the key and the prefix: empty, absolute, empty (`//`), `.` or `..`
    segments, backslashes, NUL and other control characters.
    """
    reason = _refusal(relative)
    if reason is not None:
        raise UnsafeObjectKey(f"object key {key!r} under {prefix}: refused, {reason}")
    return PurePosixPath(relative)


def inside(folder: Path, relative: PurePosixPath, *, what: str) -> Path:
    """`folder / relative`, checked after resolving (symbolic links too) to lie strictly inside `folder`.

    `relative` comes from `relative_path`, whose lexical check already refuses `..`; this one also catches a
    symbolic link in the folder that points elsewhere. `what` names the source in the error (the object key
    and its prefix).
    """
    if relative.is_absolute() or not relative.parts:
        raise UnsafeObjectKey(f"{what}: {str(relative)!r} is not a relative path below {folder}")
    target = folder / relative
    root = folder.resolve()
    resolved = target.resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise UnsafeObjectKey(f"{what}: {relative} would be written outside {folder} (at {resolved})")
    return target
