"""Asynchronous checkpoint uploads: the queue rules (pure) and the upload thread with a stand-in `upload`.

The thread tests block `upload` on an event, so "training goes on while an upload runs" and "a newer
checkpoint supersedes the waiting one" are observed states, not timing guesses.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from finetune_trainer.core.errors import InternalError, StorageAccessDenied
from finetune_trainer.training.callbacks import SignalStop, StopRequested
from finetune_trainer.training.checkpoints import UploadSlots
from finetune_trainer.training.uploader import CheckpointUploader, uploads_finished_on_error


def test_slots_one_in_flight_one_waiting_newest_wins() -> None:
    slots, dropped = UploadSlots().submit(5)
    assert slots == UploadSlots(waiting=5) and dropped is None
    slots, started = slots.start()
    assert slots == UploadSlots(in_flight=5) and started == 5
    slots, dropped = slots.submit(10)
    assert slots == UploadSlots(in_flight=5, waiting=10) and dropped is None
    assert slots.start() == (slots, None)  # one upload at a time
    slots, dropped = slots.submit(15)
    assert slots == UploadSlots(in_flight=5, waiting=15) and dropped == 10  # superseded, never started
    slots = slots.finish()
    assert slots == UploadSlots(waiting=15) and not slots.idle
    slots, started = slots.start()
    assert started == 15 and slots.finish().idle


def test_slots_ignore_a_step_not_newer_than_the_queue() -> None:
    slots = UploadSlots(in_flight=10, waiting=15)
    assert slots.submit(15) == (slots, 15)
    assert slots.submit(10) == (slots, 10)
    assert UploadSlots(in_flight=10).submit(10) == (UploadSlots(in_flight=10), 10)


class GatedUpload:
    """Records every upload; each blocks until released, or raises the error it is given."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.files: dict[int, list[str]] = {}
        self.release = threading.Semaphore(0)
        self.running = threading.Condition()
        self.error: BaseException | None = None

    def __call__(self, folder: Path, step: int) -> None:
        with self.running:
            self.started.append(step)
            self.files[step] = sorted(p.name for p in folder.iterdir())
            self.running.notify_all()
        assert self.release.acquire(timeout=10), "upload was never released"
        if self.error is not None:
            raise self.error

    def wait_started(self, count: int) -> None:
        with self.running:
            assert self.running.wait_for(lambda: len(self.started) >= count, timeout=10)


def checkpoint(root: Path, step: int) -> Path:
    folder = root / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w" * step)
    (folder / "rng_state.pth").write_bytes(b"r")
    return folder


def test_submit_returns_at_once_and_owns_the_folder(tmp_path: Path) -> None:
    upload = GatedUpload()
    uploader = CheckpointUploader(upload, tmp_path / "staging")
    local = checkpoint(tmp_path, 5)
    uploader.submit(local, 5)
    upload.wait_started(1)  # in flight, blocked: submit did not wait for it
    assert not local.exists()  # the Trainer's rotation (save_total_limit) can no longer delete it
    assert (tmp_path / "staging" / "checkpoint-5" / "adapter_model.safetensors").read_bytes() == b"w" * 5
    assert upload.files[5] == ["adapter_model.safetensors", "rng_state.pth"]
    assert uploader.slots == UploadSlots(in_flight=5) and uploader.last_complete is None
    upload.release.release()
    uploader.finish()
    assert uploader.last_complete == 5 and uploader.slots.idle
    assert list((tmp_path / "staging").iterdir()) == []  # uploaded: the local copy is gone


def test_a_newer_checkpoint_supersedes_the_waiting_one(tmp_path: Path) -> None:
    upload = GatedUpload()
    uploader = CheckpointUploader(upload, tmp_path / "staging")
    for step in (5, 10, 15):
        uploader.submit(checkpoint(tmp_path, step), step)
        if step == 5:
            upload.wait_started(1)
    assert uploader.slots == UploadSlots(in_flight=5, waiting=15)
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["checkpoint-15", "checkpoint-5"]
    upload.release.release()
    upload.release.release()
    uploader.finish()  # waits for the one in flight and the one waiting, no more
    assert upload.started == [5, 15] and uploader.last_complete == 15


def test_finish_waits_for_in_flight_and_waiting(tmp_path: Path) -> None:
    upload = GatedUpload()
    uploader = CheckpointUploader(upload, tmp_path / "staging")
    uploader.submit(checkpoint(tmp_path, 5), 5)
    upload.wait_started(1)
    uploader.submit(checkpoint(tmp_path, 8), 8)  # the checkpoint saved on SIGTERM
    done = threading.Event()
    finisher = threading.Thread(target=lambda: (uploader.finish(), done.set()))
    finisher.start()
    assert not done.wait(0.3)  # still uploading 5, then 8
    upload.release.release()
    upload.wait_started(2)
    assert not done.is_set()
    upload.release.release()
    finisher.join(10)
    assert done.is_set() and upload.started == [5, 8] and uploader.last_complete == 8
    with pytest.raises(RuntimeError, match="after the uploader finished"):
        uploader.submit(checkpoint(tmp_path, 9), 9)


@pytest.mark.parametrize("error", [StorageAccessDenied("uploading s3://b/x: access denied"), InternalError("boom")])
def test_a_failure_surfaces_with_its_class(tmp_path: Path, error: Exception) -> None:
    upload = GatedUpload()
    upload.error = error
    uploader = CheckpointUploader(upload, tmp_path / "staging")
    uploader.submit(checkpoint(tmp_path, 5), 5)
    upload.wait_started(1)
    uploader.submit(checkpoint(tmp_path, 10), 10)
    uploader.check()  # nothing failed yet: training goes on
    upload.release.release()
    with pytest.raises(type(error)) as raised:
        uploader.finish()
    assert raised.value is error and uploader.last_complete is None
    with pytest.raises(type(error)):
        uploader.check()  # what on_step_end calls: the run stops at the next step
    with pytest.raises(type(error)):
        uploader.submit(checkpoint(tmp_path, 15), 15)
    assert upload.started == [5]  # nothing more is uploaded after a failure


def test_an_exit_path_finishes_the_queue_and_keeps_its_own_exception(tmp_path: Path) -> None:
    upload = GatedUpload()
    upload.error = InternalError("network down")
    uploader = CheckpointUploader(upload, tmp_path / "staging")
    uploader.submit(checkpoint(tmp_path, 5), 5)
    upload.release.release()
    with pytest.raises(ValueError, match="crash"), uploads_finished_on_error(uploader):
        raise ValueError("crash")  # the upload failure is logged, the crash is what leaves
    assert upload.started == [5]


def test_a_repeated_sigterm_does_not_interrupt_the_final_uploads() -> None:
    stop = SignalStop()
    with pytest.raises(StopRequested):
        stop._handle(signal.SIGTERM, None)  # outside the loop: stop at once
    stop._handle(signal.SIGTERM, None)  # again, while the queued uploads finish: ignored
    assert stop.requested
