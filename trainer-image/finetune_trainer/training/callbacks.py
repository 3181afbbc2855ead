"""Hooks into the transformers Trainer loop: SIGTERM handling, checkpoint upload, progress reports.

Why a callback: the Trainer owns the step loop, and a callback is its supported extension point. On
SIGTERM (eviction, preemption, `suspend: true`) the handler only sets a flag; at the next step boundary
every rank agrees (one all-reduce) to save a checkpoint and stop, so no rank blocks in a collective the
others never enter. The entry point then waits for the upload still in flight and for that last
checkpoint (`CheckpointUploader.finish`), so both markers are written, and exits 75. Outside the training
loop (loading, evaluating) SIGTERM raises `StopRequested` at once, since there is no unsaved training
state (queued uploads are still finished on the way out); a repeated SIGTERM changes nothing. A checkpoint
is also saved at the very last step, so a pod killed during evaluation resumes straight into evaluation.

Uploads do not block the loop: `on_save` hands the folder to the rank-0 upload thread and returns. Other
ranks upload only their own RNG state (a few KB) before the barrier that lets rank 0 take the folder.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from finetune_trainer.core import distributed
from finetune_trainer.training.checkpoints import CheckpointStore
from finetune_trainer.training.progress import Reporter
from finetune_trainer.training.uploader import CheckpointUploader

log = logging.getLogger(__name__)


class StopRequested(BaseException):
    """SIGTERM outside the training loop; a BaseException so no library `except Exception` swallows it."""


class SignalStop:
    """Remembers a SIGTERM; raises StopRequested right away unless the training loop will handle it."""

    def __init__(self) -> None:
        self.requested = False
        self.in_training_loop = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the first one already decided; raising again would cut short the final uploads
            log.warning("SIGTERM received again; already stopping")
            return
        log.warning("SIGTERM received%s", ": checkpointing at the next step" if self.in_training_loop else "")
        self.requested = True
        if not self.in_training_loop:
            raise StopRequested


class TrainerHooks(TrainerCallback):  # type: ignore[misc]
    """Stop on SIGTERM, hand every saved checkpoint to the uploader, report progress (rank 0 only).

    `uploader` is rank 0's `CheckpointUploader`, None on every other rank.
    """

    def __init__(
        self, stop: SignalStop, store: CheckpointStore, uploader: CheckpointUploader | None, reporter: Reporter
    ) -> None:
        self.stop = stop
        self.store = store
        self.uploader = uploader
        self.reporter = reporter
        self.stopped_at: int | None = None
        self.last_checkpoint: int | None = None
        self.loss: float | None = None
        self.learning_rate: float | None = None
        self.started = time.monotonic()
        self.start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stop.in_training_loop = True
        self.started = time.monotonic()
        self.start_step = state.global_step
        self.last_checkpoint = state.global_step or None  # resumed from a complete checkpoint of that step
        self.start_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if self.stop.requested:  # SIGTERM arrived while the loop was starting
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stop.in_training_loop = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            self.loss = logs.get("loss", self.loss)
            self.learning_rate = logs.get("learning_rate", self.learning_rate)

    def rates(self, state: Any) -> tuple[float | None, float | None]:
        """(tokens per second, seconds per step) since this attempt's training began."""
        elapsed = time.monotonic() - self.started
        steps = state.global_step - self.start_step
        if elapsed <= 0 or steps <= 0:
            return None, None
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self.start_tokens
        return (tokens / elapsed if tokens > 0 else None), elapsed / steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.uploader is not None:
            self.uploader.check()  # a failed upload ends the run now, not hours later at the end
        if distributed.any_rank(self.stop.requested):
            self.stop.requested = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True
        complete = self.uploader.last_complete if self.uploader is not None else None
        news = complete is not None and complete != self.last_checkpoint  # newly resumable: say so at once
        if news:
            self.last_checkpoint = complete
        tokens_per_second, seconds_per_step = self.rates(state)
        self.reporter.report(
            "training",
            force=news,
            step=state.global_step,
            total=state.max_steps,
            epoch=state.epoch,
            loss=self.loss,
            learning_rate=self.learning_rate,
            tokens_per_second=tokens_per_second,
            seconds_per_step=seconds_per_step,
            last_checkpoint=self.last_checkpoint,
        )
        self.reporter.flush_if_overdue()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Queue the upload of the folder the Trainer just wrote; training goes on while it runs.

        The barrier makes sure every rank has written its files into the folder (and uploaded its own
        RNG state) before rank 0 moves the folder away and, later, writes the marker.
        """
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        self.store.upload_own_state(local, step)
        distributed.barrier()
        if self.uploader is not None:
            self.uploader.submit(local, step)
        elif distributed.node_rank() > 0 and distributed.is_local_main():
            # Another node's copy holds only this node's RNG states, uploaded above; the Trainer rotates
            # checkpoint folders on rank 0's node only, so without this they would pile up here.
            shutil.rmtree(local, ignore_errors=True)
