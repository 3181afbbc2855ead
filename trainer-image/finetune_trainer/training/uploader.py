"""The one background thread that uploads checkpoints, so the GPUs keep training while bytes go to S3.

Why a thread: a checkpoint of a full fine-tune is gigabytes, and uploading it inside `on_save` left every
GPU idle for minutes per save. The upload itself (`CheckpointStore.upload`) needs no collective, so it can
run beside the training loop; the rules it must keep live here and in `checkpoints.UploadSlots`:

- Ownership of the local folder: the Trainer deletes older `checkpoint-*` folders of its output dir when
  it writes the next one (`save_total_limit=1`), possibly while the older one is still uploading.
  `submit` therefore moves the folder into `staging` (a rename on the same disk: no copy, no shared
  inodes the Trainer could rewrite) before it returns; from then on the Trainer never sees it, and this
  module deletes it once it is uploaded or superseded.
- Bounded work on SIGTERM: one upload in flight and at most one waiting (`UploadSlots`); a newer checkpoint
  replaces the waiting one, so `finish` after a preemption waits for two uploads at most.
- No silent failure: the first error ends the thread and is re-raised, unchanged, in the training thread
  by `check` (every step), `submit` and `finish`, so the run fails with the class (and exit code) a
  synchronous upload would have raised: `StorageAccessDenied`/`StorageNotFound` (42) or `InternalError` (1).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from finetune_trainer.training.checkpoints import UploadSlots

log = logging.getLogger(__name__)


class CheckpointUploader:
    """Uploads checkpoint folders one at a time on a daemon thread; rank 0 only.

    `upload(folder, step)` uploads one folder and writes its marker (`CheckpointStore.upload`).
    """

    def __init__(self, upload: Callable[[Path, int], None], staging: Path) -> None:
        self._upload = upload
        self._staging = staging
        shutil.rmtree(staging, ignore_errors=True)  # left by an earlier attempt in the same work dir
        staging.mkdir(parents=True)
        self._lock = threading.Condition()
        self._slots = UploadSlots()
        self._failure: BaseException | None = None
        self._complete: int | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def last_complete(self) -> int | None:
        """The newest step this uploader finished (marker written): where a resume would start now."""
        with self._lock:
            return self._complete

    @property
    def slots(self) -> UploadSlots:
        with self._lock:
            return self._slots

    def staged(self, step: int) -> Path:
        return self._staging / f"checkpoint-{step}"

    def check(self) -> None:
        """Re-raise the upload failure, if any (cheap: called after every step)."""
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise failure

    def submit(self, local: Path, step: int) -> None:
        """Take over the checkpoint folder `local` (moved into staging) and queue its upload; returns at once.

        Call after every rank finished writing its files for `step` (they all live in `local`).
        """
        self.check()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"checkpoint {step} submitted after the uploader finished")
            slots, dropped = self._slots.submit(step)
            if dropped == step:
                log.warning("checkpoint %d is not newer than the queued ones; not uploaded again", step)
                return
            target = self.staged(step)
            shutil.rmtree(target, ignore_errors=True)
            local.rename(target)
            self._slots = slots
            self._lock.notify_all()
        if dropped is not None:
            log.info("checkpoint %d superseded by %d before its upload started", dropped, step)
            shutil.rmtree(self.staged(dropped), ignore_errors=True)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
            self._thread.start()

    def finish(self) -> None:
        """Wait until every queued upload is done, stop the thread, re-raise the first failure.

        Bounded by two uploads (`UploadSlots`); the pod's grace period is sized for that.
        """
        with self._lock:
            if not self._slots.idle and self._failure is None:
                log.info(
                    "finishing checkpoint uploads: %s in flight, %s waiting",
                    self._slots.in_flight or "none",
                    self._slots.waiting or "none",
                )
            self._closed = True
            self._lock.notify_all()
            while self._failure is None and not self._slots.idle:
                self._lock.wait()
        self.check()

    def finish_quietly(self, leaving: BaseException | None = None) -> None:
        """`finish` on an exit path that already carries `leaving`: a failure is logged, not raised."""
        try:
            self.finish()
        except Exception as failure:
            if failure is not leaving:
                log.error("checkpoint upload failed while the trainer was stopping: %s", failure)

    def _next(self) -> int | None:
        """Block until a step goes in flight (None: closed and nothing left)."""
        with self._lock:
            while True:
                self._slots, step = self._slots.start()
                if step is not None:
                    return step
                if self._closed:
                    return None
                self._lock.wait()

    def _run(self) -> None:
        while (step := self._next()) is not None:
            try:
                self._upload(self.staged(step), step)
            except BaseException as error:  # surfaced in the training thread by check/submit/finish
                log.error("checkpoint %d upload failed: %s", step, error)
                with self._lock:
                    self._failure = error
                    self._lock.notify_all()
                return
            shutil.rmtree(self.staged(step), ignore_errors=True)
            with self._lock:
                self._slots = self._slots.finish()
                self._complete = step
                self._lock.notify_all()


@contextlib.contextmanager
def uploads_finished_on_error(uploader: CheckpointUploader | None) -> Iterator[None]:
    """On any exception (a crash, a late SIGTERM), finish the queued uploads before it propagates.

    Their checkpoints are complete on local disk; uploading them (two at most) lets the next attempt resume
    from them. Their own failure is logged, never raised over the exception already on its way out.
    """
    try:
        yield
    except BaseException as leaving:
        if uploader is not None:
            uploader.finish_quietly(leaving)
        raise
