"""Checkpoints in object storage: upload after every save, completion marker last, resume, retention.

Why a marker: an upload interrupted by SIGKILL, OOM or node loss leaves a partial folder; only a folder
whose `_COMPLETE` object exists (written after every other file) is ever resumed from. On start the newest
complete `checkpoint-<step>` of this run is downloaded and handed to the Trainer, which restores weights,
optimizer, scheduler, RNG and the step counter. Only the newest `keep` complete checkpoints stay; older
ones and abandoned partial ones are deleted. `select_for_deletion` is pure and unit-tested.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer import distributed
from finetune_trainer.storage import S3Uri, Storage

log = logging.getLogger(__name__)

MARKER = "_COMPLETE"
_KEY = re.compile(r"checkpoint-(\d+)/(.+)$")


@dataclass(frozen=True)
class CheckpointIndex:
    """What exists under `run-N/checkpoints/`: every step seen, and the steps whose marker exists."""

    steps: frozenset[int]
    complete: frozenset[int]

    @property
    def newest_complete(self) -> int | None:
        return max(self.complete) if self.complete else None


def index_from_keys(keys: Iterable[str]) -> CheckpointIndex:
    """Parse object keys (relative or absolute) into the checkpoint index."""
    steps, complete = set(), set()
    for key in keys:
        match = _KEY.search(key)
        if not match:
            continue
        step = int(match.group(1))
        steps.add(step)
        if match.group(2) == MARKER:
            complete.add(step)
    return CheckpointIndex(frozenset(steps), frozenset(complete))


def select_for_deletion(index: CheckpointIndex, keep: int) -> list[int]:
    """Complete checkpoints beyond the newest `keep`, and partial ones older than the newest complete one.

    Partial checkpoints newer than every complete one are left alone: one may be uploading right now.
    """
    newest = index.newest_complete
    if newest is None:
        return []
    kept = set(sorted(index.complete, reverse=True)[:keep])
    return sorted(
        step for step in index.steps if step not in kept and (step in index.complete or step < newest)
    )


def uploads(name: str, rank: int, world: int) -> bool:
    """Whether `rank` uploads the checkpoint file `name`: its own RNG state, and rank 0 everything shared.

    Each rank's RNG state may exist only on its own node's disk; the model, optimizer and trainer state
    are written by rank 0 alone.
    """
    own_rng = f"rng_state_{rank}.pth" if world > 1 else "rng_state.pth"
    if name.startswith("rng_state"):
        return name == own_rng
    return rank == 0


class CheckpointStore:
    """The checkpoints of one run in object storage (`<runUri>checkpoints/`)."""

    def __init__(self, storage: Storage, run_uri: S3Uri, keep: int) -> None:
        self.storage = storage
        self.root = run_uri.join("checkpoints/")
        self.keep = keep

    def index(self) -> CheckpointIndex:
        return index_from_keys(o.uri.key for o in self.storage.iter_objects(self.root))

    def uri(self, step: int) -> S3Uri:
        return self.root.join(f"checkpoint-{step}/")

    def fetch_latest(self, local_root: Path) -> Path | None:
        """Download the newest complete checkpoint to `local_root/checkpoint-<step>` (None: there is none)."""
        step = self.index().newest_complete
        if step is None:
            return None
        target = local_root / f"checkpoint-{step}"
        self.storage.download(self.uri(step), target)
        (target / MARKER).unlink(missing_ok=True)
        log.info("resuming from %s (step %d)", self.uri(step), step)
        return target

    def upload(self, local: Path, step: int, resolved_config: str) -> None:
        """Upload a checkpoint folder the Trainer wrote; rank 0 writes the marker once all ranks are done.

        Every rank uploads its own RNG state (it may live on another node's disk); rank 0 uploads the rest.
        """
        target = self.uri(step)
        rank, world = distributed.rank(), distributed.world_size()
        self.storage.upload_dir(local, target, skip=lambda path: not uploads(path.name, rank, world))
        distributed.barrier()
        if distributed.is_main():
            self.storage.write_bytes(
                target.join("trainer_config.json"), resolved_config.encode(), "application/json"
            )
            self.storage.write_bytes(
                target.join(MARKER), json.dumps({"step": step}).encode(), "application/json"
            )
            log.info("checkpoint %d complete at %s", step, target)
            self.prune()

    def prune(self) -> list[int]:
        """Delete checkpoints beyond the newest `keep` complete ones; returns the deleted steps."""
        doomed = select_for_deletion(self.index(), self.keep)
        for step in doomed:
            self.storage.delete_prefix(self.uri(step))
            log.info("deleted old checkpoint %s", self.uri(step))
        return doomed
