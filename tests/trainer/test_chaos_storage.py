"""Chaos, object storage: the S3 server goes away in the middle of a run, the real trainer against the real server.

The fault: every connection to the S3 server goes through `tests.support.chaos.FaultProxy`, which cuts the open
ones and refuses new ones for the outage (the server itself keeps serving the other tests). What must hold:
- an outage shorter than the trainer's patience (`FTO_S3_PATIENCE_SECONDS`), starting as a checkpoint upload
  starts while training goes on, is ridden out: the run completes, every checkpoint has its marker;
- an outage longer than the patience fails the run with `StorageUnavailable` (exit 1: retryable), and the
  checkpoint whose upload it broke is never resumed from: the next attempt resumes from the one before it.
`bench/chaos.py` runs the 30 s outage and prints the retries and the delay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core import storage as storage_module
from finetune_trainer.core.errors import INTERNAL_ERROR_EXIT_CODE
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.training.callbacks import TrainerHooks
from finetune_trainer.training.checkpoints import CheckpointStore

from tests.support.chaos import FaultProxy
from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = [pytest.mark.s3, pytest.mark.slow]

Runner = Callable[[dict[str, Any]], TrainerResult]
OUTAGE_SECONDS = 6.0


@pytest.fixture
def proxy(s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """Every S3 request of the in-process trainer goes through the fault proxy."""
    with FaultProxy.to_url(s3_bucket.endpoint.url) as fault:
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", fault.url)
        yield fault


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every step the trainer ends, in order (the real hook still runs)."""
    seen: list[int] = []
    on_step_end = TrainerHooks.on_step_end

    def record(self: TrainerHooks, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        seen.append(state.global_step)
        on_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(TrainerHooks, "on_step_end", record)
    return seen


def checkpoint_keys(s3_bucket: Any) -> dict[int, list[str]]:
    pages = s3_bucket.client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket.name, Prefix="out/run-1/checkpoints/"
    )
    found: dict[int, list[str]] = {}
    for page in pages:
        for item in page.get("Contents", []):
            step = int(item["Key"].split("/")[3].split("-")[1])
            found.setdefault(step, []).append(item["Key"].rsplit("/", 1)[1])
    return found


def config(s3_bucket: Any, tiny_llama_uri: str, max_steps: int) -> dict[str, Any]:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(120))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["hyperparameters"]["maxSteps"] = max_steps
    raw["checkpointing"] = {"intervalSteps": 5, "keep": 3}
    return raw


def test_an_outage_during_a_checkpoint_upload_is_ridden_out(
    s3_bucket: Any,
    tiny_llama_uri: str,
    run_trainer: Runner,
    proxy: FaultProxy,
    steps: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = config(s3_bucket, tiny_llama_uri, max_steps=20)
    upload = CheckpointStore.upload
    outage: list[float] = []

    def cut_at_the_second_checkpoint(self: CheckpointStore, local: Path, step: int, resolved: str) -> None:
        if step == 10 and not outage:
            proxy.down()
            outage.append(time.monotonic())
            threading.Timer(OUTAGE_SECONDS, proxy.up).start()
        upload(self, local, step, resolved)

    monkeypatch.setattr(CheckpointStore, "upload", cut_at_the_second_checkpoint)
    before = storage_module.OUTAGES.retries, storage_module.OUTAGES.waited_seconds
    result = run_trainer(raw)
    retries = storage_module.OUTAGES.retries - before[0]
    waited = storage_module.OUTAGES.waited_seconds - before[1]
    print(f"outage {OUTAGE_SECONDS:.0f}s: {retries} retries, {waited:.1f}s waited, {proxy.refused} refused")
    assert result.exit_code == 0, result.termination
    assert outage and retries >= 1 and proxy.refused >= 1
    assert steps[-1] == 20 and steps == sorted(set(steps))  # one attempt, no step repeated
    checkpoints = checkpoint_keys(s3_bucket)
    assert 20 in checkpoints and all("_COMPLETE" in files for files in checkpoints.values()), checkpoints


def test_an_outage_beyond_the_patience_fails_retryable_and_the_broken_checkpoint_is_never_resumed(
    s3_bucket: Any,
    tiny_llama_uri: str,
    run_trainer: Runner,
    proxy: FaultProxy,
    steps: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = config(s3_bucket, tiny_llama_uri, max_steps=20)
    monkeypatch.setenv("FTO_S3_PATIENCE_SECONDS", "2")
    upload_file = storage_module.Storage.upload_file
    uploaded: list[str] = []

    def cut_inside_checkpoint_10(self: storage_module.Storage, path: Path, uri: S3Uri) -> storage_module.Uploaded:
        if "/checkpoint-10/" in uri.key:
            uploaded.append(uri.key)
            if len(uploaded) == 2:  # one object of it is stored: a partial checkpoint
                proxy.down()
        return upload_file(self, path, uri)

    monkeypatch.setattr(storage_module.Storage, "upload_file", cut_inside_checkpoint_10)
    failed = run_trainer(raw)
    assert failed.exit_code == INTERNAL_ERROR_EXIT_CODE, failed.termination
    assert failed.termination["code"] == "StorageUnavailable", failed.termination
    assert "FTO_S3_PATIENCE_SECONDS=2" in failed.termination["message"]
    partial = checkpoint_keys(s3_bucket)[10]
    assert partial and "_COMPLETE" not in partial

    proxy.up()
    monkeypatch.setattr(storage_module.Storage, "upload_file", upload_file)
    first_attempt = len(steps)
    resumed = run_trainer(raw)
    assert resumed.exit_code == 0, resumed.termination
    assert steps[first_attempt] == 6  # resumed from checkpoint-5, the newest with its marker, not the broken 10
    assert "_COMPLETE" in checkpoint_keys(s3_bucket)[20]
