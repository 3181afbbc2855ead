"""How the FineTuneSweep loop registers (core.registry): its kind, its loop, and what it watches.

Sweep bodies fill its memory and queue themselves; its trial candidates (FineTuneJobs labelled
finetune.dev/sweep-uid) are filed under that label and queue the sweep of that uid in their own namespace urgently,
since its leaderboard may move; the sweep's pass counts only those it controls (store.is_trial), and each resync
prunes candidates whose sweep is gone. One pass at a time: sweeps are few
and their passes short.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.api.finetunesweep import LABEL_SWEEP_UID, SWEEP_KIND, SWEEP_PLURAL
from finetune_operator.core.registry import DELETED, Controller, Resource, Watch
from finetune_operator.core.store import Key
from finetune_operator.finetunesweep.controller import SweepReconciler

FINETUNESWEEPS = Resource(GROUP, VERSION, SWEEP_PLURAL, SWEEP_KIND)
FINETUNEJOBS = Resource(GROUP, VERSION, PLURAL, KIND)


def _sweep_body(loop: SweepReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    meta = body["metadata"]
    if event == DELETED:
        loop.sweeps.forget_sweep(meta["namespace"], meta["name"], meta["uid"])
        loop.accepted.forget(meta["uid"])
        return []
    return [loop.sweeps.put_sweep(body)]


def _trial(loop: SweepReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    meta = body["metadata"]
    sweep_uid = meta["labels"][LABEL_SWEEP_UID]
    if event == DELETED:
        key = loop.sweeps.forget_trial(sweep_uid, meta["namespace"], meta["name"])
    else:
        key = loop.sweeps.put_trial(sweep_uid, body)
    return [key] if key is not None else []


CONTROLLER: Controller[SweepReconciler] = Controller(
    kind=SWEEP_KIND,
    resource=FINETUNESWEEPS,
    build=lambda kube, _store, _settings: SweepReconciler(kube),
    reconcile=SweepReconciler.reconcile,
    keys=lambda loop: loop.sweeps.all_keys(),
    concurrency=lambda _settings: 1,
    prune=SweepReconciler.prune,
    watches=(
        Watch(FINETUNESWEEPS, _sweep_body),
        Watch(FINETUNEJOBS, _trial, owner_label=LABEL_SWEEP_UID, urgent=True),
    ),
)
