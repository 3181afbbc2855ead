"""The operator's memory of FineTuneSweeps: their bodies, and compact observations of their trials.

Why: a sweep's pass reads its trials from memory (watch events fill it, through the registry) instead of listing
FineTuneJobs on every pass. Every access takes one lock (reconcile threads read it).

Ownership (api.ownership): the sweep-uid label only files candidates (a cheap index, and it tells a deleted and
re-created sweep of the same name apart); `view` keeps only what `is_trial` says is the sweep's: in its namespace
and controlled by it, or the winner it published. Candidates go with their sweep, and `prune` (the registry's
resync) drops those filed under a uid no sweep has, so memory is bounded by the live sweeps.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from finetune_operator.core.store import Key, held_copy
from finetune_operator.finetunesweep.observed import TrialObs, trial_obs


def is_trial(trial: TrialObs, sweep: dict[str, Any]) -> bool:
    """Whether a FineTuneJob is a trial of this sweep (api.ownership): in the sweep's namespace, and controlled
    by the sweep, or the winner it published (which no longer has the owner reference: the sweep recorded
    its uid in status.winner before publishing it). The sweep-uid label only finds candidates."""
    meta = sweep["metadata"]
    if not trial.uid or trial.namespace != meta["namespace"]:
        return False
    winner = (sweep.get("status") or {}).get("winner") or {}
    return trial.controller == meta["uid"] or (trial.published and trial.uid == winner.get("uid"))


class SweepStore:
    """Sweep bodies by key, and the compact observations of their trial candidates filed by the sweep-uid label
    (a cheap index: `view` keeps only what `is_trial` says is the sweep's), filled by the watch events of both
    kinds. Candidates go with their sweep, and `prune` drops those filed under a uid no sweep has."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[Key, dict[str, Any]] = {}
        self._uids: dict[str, Key] = {}
        self._trials: dict[str, dict[Key, TrialObs]] = {}  # sweep uid (label) -> (namespace, name) -> trial
        self._orphans: set[str] = set()

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
                self._bodies[key] = held_copy(body)
                self._uids[str(meta["uid"])] = key
        return key

    def forget_sweep(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            self._bodies.pop((namespace, name), None)
            self._uids.pop(uid, None)
            self._trials.pop(uid, None)

    def put_trial(self, sweep_uid: str, body: dict[str, Any]) -> Key | None:
        """File one candidate's observation; the key of its sweep when known and in the same namespace (to
        queue it)."""
        observed = trial_obs(body)
        with self._lock:
            self._trials.setdefault(sweep_uid, {})[(observed.namespace, observed.name)] = observed
            return self._sweep_in(sweep_uid, observed.namespace)

    def forget_trial(self, sweep_uid: str, namespace: str, name: str) -> Key | None:
        with self._lock:
            trials = self._trials.get(sweep_uid)
            if trials is not None:
                trials.pop((namespace, name), None)
                if not trials:
                    self._trials.pop(sweep_uid, None)
            return self._sweep_in(sweep_uid, namespace)

    def key_of(self, uid: str) -> Key | None:
        with self._lock:
            return self._uids.get(uid)

    def _sweep_in(self, sweep_uid: str, namespace: str) -> Key | None:
        key = self._uids.get(sweep_uid)
        return key if key is not None and key[0] == namespace else None

    def prune(self) -> int:
        """Drop the candidates filed under a uid no sweep in memory has, at the second prune that finds them
        (a trial's event may come before its sweep's). How many groups went."""
        with self._lock:
            found = {uid for uid in self._trials if uid not in self._uids}
            drop, self._orphans = found & self._orphans, found - self._orphans
            for uid in drop:
                self._trials.pop(uid, None)
            return len(drop)

    def sizes(self) -> int:
        with self._lock:
            return len(self._trials)

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
            trials = tuple(t for t in self._trials.get(str(meta["uid"]), {}).values() if is_trial(t, body))
            return copy.deepcopy(body), trials
