"""Status patching shared by the three control loops: the merge patch from old to new status, the time, and
the pace of patches that only reword conditions.

Why one home: each loop patches its resource's status only when it changed, with a merge patch computed the
same way (keys another writer owns are kept); three copies drifted before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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


# A condition's wording that lasts under this long is not worth a write of its own (see StatusPace).
REWORDING_INTERVAL_SECONDS = 2.0

_WORDING = ("reason", "message")


def only_rewords(old: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Whether `patch` changes nothing in `old` but the reason and message of conditions that keep their type,
    status, transition time and observed generation: a pod scheduled and then running a moment later, say."""
    after = patch.get("conditions")
    if set(patch) != {"conditions"} or not isinstance(after, list):
        return False
    before = {c.get("type"): c for c in old.get("conditions") or [] if isinstance(c, dict)}
    if len(after) != len(before):
        return False
    for condition in after:
        prior = before.get(condition.get("type")) if isinstance(condition, dict) else None
        if prior is None:
            return False
        if {k: v for k, v in condition.items() if k not in _WORDING} != {
            k: v for k, v in prior.items() if k not in _WORDING
        }:
            return False
    return True


class StatusPace:
    """When a status patch that only rewords conditions may go out: no sooner than `interval` after this
    process last wrote that object's status (any other patch goes out at once).

    Why: at 500 FineTuneJobs about a quarter of all status writes said what was true for a fraction of a second
    ("pod scheduled, starting", then "running" 0.2 s later), each a write the API server stores and sends to
    every watcher. A phase change, an error, a new field or a flipped condition is never held; a wording held
    back is written by the pass `hold`'s answer schedules, from what is true then, so a state that lasts
    longer than the interval is always shown (at most `interval` late) and one that does not may be skipped.
    """

    def __init__(self, interval: float = REWORDING_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = interval, clock
        self._written: dict[str, float] = {}  # uid -> when this process last patched its status
        self._lock = threading.Lock()

    def hold(self, uid: str, old: dict[str, Any], patch: dict[str, Any]) -> float:
        """Seconds to wait before writing `patch` (0: write it now)."""
        if not only_rewords(old, patch):
            return 0.0
        with self._lock:
            last = self._written.get(uid)
        if last is None:
            return 0.0
        return max(0.0, last + self.interval - self.clock())

    def wrote(self, uid: str) -> None:
        with self._lock:
            self._written[uid] = self.clock()

    def forget(self, uid: str) -> None:
        with self._lock:
            self._written.pop(uid, None)

    def keep_only(self, alive: Callable[[str], bool]) -> None:
        """Drop what is remembered of objects `alive` no longer knows (the loop's resync prune)."""
        with self._lock:
            self._written = {uid: at for uid, at in self._written.items() if alive(uid)}
