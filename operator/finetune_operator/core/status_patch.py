"""Status patching shared by the three control loops: the merge patch from old to new status, and the time.

Why one home: each loop patches its resource's status only when it changed, with a merge patch computed the
same way (keys another writer owns are kept); three copies drifted before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(old: dict[str, Any], new: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """RFC 7386 merge patch turning `old` into `new`; keys in `keep` (someone else's) are left alone."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif before != value:
            patch[key] = value
    for key, value in old.items():
        if key not in new and key not in keep and value is not None:
            patch[key] = None
    return patch
