"""Checkpoints in object storage: upload after every save, completion marker last, resume, retention.

Why a marker: an upload interrupted by SIGKILL, OOM or node loss leaves a partial folder; only a folder
whose `_COMPLETE` object exists (written after every other file) is ever resumed from. The marker names every
file rank 0 uploaded with its size and sha256 (other ranks' RNG states carry theirs in their metadata, as every
object the trainer writes: core/integrity.py). On start the newest complete `checkpoint-<step>` of this run is
downloaded, verified (a listing without a file the marker names, or a file whose bytes differ from its record
after one more download, refuses it) and handed to the Trainer, which restores weights, optimizer, scheduler,
RNG and the step counter; a refused checkpoint is logged and the one before it is tried, so a corrupt
checkpoint costs the steps since the previous one, never the run. Only when every complete checkpoint is
refused does the run fail (`ObjectCorrupt`, naming each). Only the newest `keep` complete checkpoints stay; older
ones and abandoned partial ones are deleted. `select_for_deletion` is pure and unit-tested.

Uploads run beside training (`finetune_trainer.training.uploader` owns the thread); what that thread uploads next,
and which checkpoint a newer one makes pointless, is decided here by `UploadSlots`, pure and unit-tested.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from finetune_trainer.config import JobRef
from finetune_trainer.core import distributed, integrity
from finetune_trainer.core.errors import ConfigInvalid, ObjectCorrupt
from finetune_trainer.core.s3_uri import S3Uri, relative_key
from finetune_trainer.core.storage import Storage
from finetune_trainer.training.sharding import SHARD_FILE

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
    return sorted(step for step in index.steps if step not in kept and (step in index.complete or step < newest))


def uploads(name: str, rank: int, world: int) -> bool:
    """Whether `rank` uploads the checkpoint file `name`: its own RNG state, and rank 0 everything shared.

    Each rank's RNG state, and with FSDP its shard of the model and optimizer (`__<rank>_0.distcp`), may exist
    only on its own node's disk; everything else is written by rank 0 alone.
    """
    own_rng = f"rng_state_{rank}.pth" if world > 1 else "rng_state.pth"
    if name.startswith("rng_state"):
        return name == own_rng
    shard = SHARD_FILE.match(name)  # a sharded (FSDP) checkpoint: each rank wrote its own shard
    if shard:
        return int(shard.group(1)) == rank
    return rank == 0


@dataclass(frozen=True)
class UploadSlots:
    """The checkpoint upload in flight and the one waiting behind it: never more than one of each.

    Why bounded: on SIGTERM the pod has a grace period to finish every upload still queued, so the queue
    must stay short whatever the ratio of upload time to save interval. A newer checkpoint replaces a
    waiting one (it restores everything the older one would, and more steps); it never replaces the one in
    flight, whose marker is the nearest resumable point and which is partly uploaded already.
    """

    in_flight: int | None = None
    waiting: int | None = None

    @property
    def idle(self) -> bool:
        return self.in_flight is None and self.waiting is None

    def submit(self, step: int) -> tuple[UploadSlots, int | None]:
        """Queue `step`; returns the new slots and the step that will now never be uploaded (or None).

        The dropped step is the superseded waiting one, or `step` itself when it is not newer than what is
        already queued (a repeated save of the same step adds nothing).
        """
        queued = [s for s in (self.in_flight, self.waiting) if s is not None]
        if queued and step <= max(queued):
            return self, step
        return replace(self, waiting=step), self.waiting

    def start(self) -> tuple[UploadSlots, int | None]:
        """When nothing is in flight, the waiting step goes in flight; returns it (None: nothing to start)."""
        if self.in_flight is not None or self.waiting is None:
            return self, None
        return UploadSlots(in_flight=self.waiting), self.waiting

    def finish(self) -> UploadSlots:
        """The upload in flight is done (its marker written)."""
        return replace(self, in_flight=None)


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
        """Download the newest complete checkpoint that verifies to `local_root/checkpoint-<step>` (None: there
        is no complete one). A corrupt or incomplete one is skipped for the one before it; when every complete
        checkpoint is refused, ObjectCorrupt names them all."""
        refused = []
        for step in sorted(self.index().complete, reverse=True):
            target = local_root / f"checkpoint-{step}"
            try:
                self.fetch(step, target)
            except ObjectCorrupt as error:
                shutil.rmtree(target, ignore_errors=True)
                log.error("checkpoint %d cannot be resumed from, trying the one before it: %s", step, error)
                refused.append(str(error))
                continue
            log.info("resuming from %s (step %d)", self.uri(step), step)
            return target
        if refused:
            raise ObjectCorrupt(f"no checkpoint under {self.root} can be resumed from: {' | '.join(refused)}")
        return None

    def fetch(self, step: int, target: Path) -> None:
        """Download checkpoint `step` to `target`, verified against its marker and each object's own record."""
        uri = self.uri(step)
        marker = uri.join(MARKER)
        try:
            entries = integrity.entries_from_marker(json.loads(self.storage.read_bytes(marker)), str(marker))
        except ValueError as error:  # a marker that is no JSON, or a malformed file list
            raise ObjectCorrupt(f"{marker}: {error}") from None
        objects = [o for o in self.storage.list(uri) if o.uri.key != marker.key]
        listed = {relative_key(o.uri, uri): o.size for o in objects}
        missing = integrity.missing_from_listing(entries, listed, str(uri))
        if missing:
            raise ObjectCorrupt(f"checkpoint {step} does not match its {MARKER} marker: {'; '.join(missing)}")
        sha256s = {uri.key + name: sha for name, (_, sha) in entries.items()}
        self.storage.download_listed(objects, uri, target, sha256s)

    def upload_own_state(self, local: Path, step: int) -> None:
        """On ranks other than 0: upload this rank's RNG state now, before the barrier of `on_save`.

        It may exist only on this rank's node, and it is a few KB, so it goes synchronously; everything else
        (and the marker) is rank 0's `upload`, which runs on the upload thread. Rank 0 uploads nothing here.
        """
        rank, world = distributed.rank(), distributed.world_size()
        if rank == 0:
            return
        self.storage.upload_dir(local, self.uri(step), skip=lambda path: not uploads(path.name, rank, world))

    def upload(self, local: Path, step: int, resolved_config: str) -> None:
        """Rank 0: upload the shared files of a checkpoint, then its config, then the marker (naming each file
        uploaded here with its size and sha256); then prune.

        Call only once every other rank's `upload_own_state` for `step` has returned (the barrier in
        `on_save`), so the marker is written after every object of the checkpoint. Uses no collective, so
        it may run on a thread while training continues.
        """
        target = self.uri(step)
        world = distributed.world_size()
        log.info("uploading checkpoint %d to %s", step, target)
        started = time.monotonic()
        # the same step saved again (after resuming from an earlier one): its old marker goes before any file
        self.storage.delete(target.join(MARKER))
        written = self.storage.upload_dir(local, target, skip=lambda path: not uploads(path.name, 0, world))
        written.append(
            self.storage.write_bytes(target.join("trainer_config.json"), resolved_config.encode(), "application/json")
        )
        files = {relative_key(w.uri, target): {"size": w.size, "sha256": w.sha256} for w in written}
        marker = json.dumps({"step": step, "files": dict(sorted(files.items()))}, indent=1).encode()
        self.storage.write_bytes(target.join(MARKER), marker, "application/json")
        log.info("checkpoint %d complete at %s (%.1fs)", step, target, time.monotonic() - started)
        self.prune()

    def prune(self) -> list[int]:
        """Delete checkpoints beyond the newest `keep` complete ones; returns the deleted steps."""
        doomed = select_for_deletion(self.index(), self.keep)
        for step in doomed:
            self.storage.delete_prefix(self.uri(step))
            log.info("deleted old checkpoint %s", self.uri(step))
        return doomed


def refuse_foreign_run(storage: Storage, run_uri: S3Uri, job: JobRef) -> None:
    """A run folder another FineTuneJob wrote is neither resumed nor overwritten: ConfigInvalid (exit 42).

    It happens when a FineTuneJob is deleted and re-created under the same name, or when two share an
    output.uri: the folder's checkpoints belong to another model (resuming them crashed on mismatched shapes,
    retried as an internal error), and its model and report are someone's finished work. `trainer_config.json`
    at the run's root says whose run it is (its `job.uid`)."""
    marker = run_uri.join("trainer_config.json")
    if not job.uid or not storage.exists(marker):
        return
    try:
        recorded = json.loads(storage.read_bytes(marker)).get("job") or {}
    except ValueError:
        return
    owner = recorded.get("uid")
    if owner and owner != job.uid:
        raise ConfigInvalid(
            f"output.uri: {run_uri} holds run {recorded.get('run')} of another FineTuneJob "
            f"({recorded.get('namespace')}/{recorded.get('name')}, uid {owner}); its checkpoints and model are "
            f"left as they are. Give this job an output.uri of its own, or delete {run_uri} if that run is not "
            "needed any more"
        )
