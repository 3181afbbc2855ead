"""Free space before a download: a model or dataset that cannot fit on the pod's disk is refused with the
numbers before the first byte is written, instead of failing deep inside a copy with "No space left on device"
(or filling the node's disk until the kubelet evicts every pod on it).

Why retryable (`InsufficientDisk`, exit 1) and not a user error: the space is the node's (the training pods'
scratch folder is an emptyDir), so a retry that lands on another node, or on this one after it was cleaned up,
can succeed; the message says how much was needed and how much was free.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from finetune_trainer.core.errors import InsufficientDisk

MARGIN_BYTES = 256 * 2**20
"""Room kept free beyond the download itself (temporary `.part` files, logs, the tokenizer's caches)."""


def _existing(path: Path) -> Path:
    """The nearest folder that exists at or above `path` (the download creates the rest)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_fits(needed: int, free: int, what: str, where: Path) -> None:
    """Raise InsufficientDisk unless `needed` bytes plus the margin fit in `free`. Pure."""
    if needed + MARGIN_BYTES > free:
        raise InsufficientDisk(
            f"not enough disk for {what}: it needs {needed / 2**30:.2f} GiB (+{MARGIN_BYTES // 2**20} MiB margin) "
            f"under {where}, and {free / 2**30:.2f} GiB is free there"
        )


def ensure_free_space(needed: int, what: str, where: Path) -> None:
    """Check `needed` bytes against the free space of the filesystem that will hold `where`."""
    check_fits(needed, shutil.disk_usage(_existing(where)).free, what, where)
