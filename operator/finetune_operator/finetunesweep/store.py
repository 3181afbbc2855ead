"""The operator's memory of FineTuneSweeps: their bodies, and compact observations of their trials.

Why: a sweep's pass reads its trials from memory (watch events fill it, through the registry) instead of listing
FineTuneJobs on every pass; trials are filed by the sweep's uid (their finetune.dev/sweep-uid label), which tells
a deleted and re-created sweep of the same name apart. Every access takes one lock (reconcile threads read it).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from finetune_operator.core.store import Key
from finetune_operator.finetunesweep.observed import TrialObs, trial_obs


class SweepStore:
    """Sweep bodies by key, and the compact observations of their trials by the sweep's uid (the trial's
    finetune.dev/sweep-uid label), filled by the watch events of both kinds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[Key, dict[str, Any]] = {}
        self._uids: dict[str, Key] = {}
        self._trials: dict[str, dict[str, TrialObs]] = {}

    def put_sweep(self, body: dict[str, Any]) -> Key:
        meta = body["metadata"]
        assert isinstance(meta, dict)
        key = (str(meta["namespace"]), str(meta["name"]))
        with self._lock:
            old = self._bodies.get(key)
            old_meta = old.get("metadata") if old else None
            try:
                stale = isinstance(old_meta, dict) and int(str(old_meta["resourceVersion"])) > int(
                    str(meta["resourceVersion"])
                )
            except (KeyError, ValueError):
                stale = False
            if not stale:
                self._bodies[key] = copy.deepcopy(body)
                self._uids[str(meta["uid"])] = key
        return key

    def forget_sweep(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            self._bodies.pop((namespace, name), None)
            self._uids.pop(uid, None)
            self._trials.pop(uid, None)

    def put_trial(self, sweep_uid: str, body: dict[str, Any]) -> Key | None:
        """File one trial's observation; the key of its sweep when known (to queue it)."""
        observed = trial_obs(body)
        with self._lock:
            self._trials.setdefault(sweep_uid, {})[observed.name] = observed
            return self._uids.get(sweep_uid)

    def forget_trial(self, sweep_uid: str, name: str) -> Key | None:
        with self._lock:
            self._trials.get(sweep_uid, {}).pop(name, None)
            return self._uids.get(sweep_uid)

    def all_keys(self) -> list[Key]:
        with self._lock:
            return list(self._bodies)

    def view(self, key: Key) -> tuple[dict[str, Any], tuple[TrialObs, ...]] | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is None:
                return None
            meta = body["metadata"]
            assert isinstance(meta, dict)
            trials = tuple(self._trials.get(str(meta["uid"]), {}).values())
            return copy.deepcopy(body), trials
