"""The key map of a running server, re-read whenever the adapters sidecar rewrites its copy of adapters.json.

Why a file in the pod: the sidecar already reads the operator's desired list every pass (it alone holds a token
for the API); it writes that document verbatim, atomically (write then rename), into the pod's adapters emptyDir,
which the server or gateway mounts read-only. A `stat` per request tells whether it changed (inode, size and
mtime), so a tenant added to or removed from the list gains or loses its key within a sidecar pass, without a
restart. A file that cannot be read or parsed keeps the last good map (and is logged once per change): the
admin key always works, and a half-written file never opens or closes anything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from finetune_trainer.serving.auth import KeyMap

log = logging.getLogger(__name__)


class WatchedKeys:
    """`current()`: the KeyMap of `admin_key` and the file at `path` (None: no file, the admin key alone)."""

    def __init__(self, admin_key: str | None, path: Path | None, reserved: frozenset[str] = frozenset()) -> None:
        self.admin_key, self.path, self.reserved = admin_key, path, reserved
        self._keys = KeyMap.from_adapters(admin_key, None)
        self._seen: tuple[int, int, int] | None = None

    def current(self) -> KeyMap:
        if self.path is None or self._keys.open:
            return self._keys
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            signature = None
        except OSError as error:
            log.error("cannot stat %s: %s (keeping the last key map)", self.path, error)
            return self._keys
        else:
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._seen:
            return self._keys
        self._seen = signature
        if signature is None:  # not written yet (or removed): the admin key alone
            self._keys = KeyMap.from_adapters(self.admin_key, None)
            return self._keys
        try:
            keys = KeyMap.from_adapters_text(self.admin_key, self.path.read_text(encoding="utf-8"), self.reserved)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            log.error("%s: %s (keeping the last key map)", self.path, error)
            return self._keys
        for problem in keys.problems:
            log.error("%s: %s", self.path, problem)
        self._keys = keys
        log.info("%s: %d tenant keys", self.path, len(keys.tenants))
        return self._keys
