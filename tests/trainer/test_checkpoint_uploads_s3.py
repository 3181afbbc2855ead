"""Checkpoint uploads run beside training: the real trainer, the real S3 server behind a slow/refusing proxy.

The proxy (tests/trainer/s3proxy.py) only delays or refuses PUTs under `checkpoints/`; every byte still
goes to the real server. Timestamps come from wrappers around the real step hook and the real upload.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE
from finetune_trainer.training import train as train_module
from finetune_trainer.training.callbacks import TrainerHooks
from finetune_trainer.training.checkpoints import CheckpointStore

from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult
from tests.trainer.s3proxy import S3Proxy

pytestmark = [pytest.mark.s3, pytest.mark.slow]

Runner = Callable[[dict[str, Any]], TrainerResult]


class Timeline:
    """(monotonic time, step) of every step end; (step, start, end) of every checkpoint upload."""

    def __init__(self) -> None:
        self.step_ends: list[tuple[float, int]] = []
        self.uploads: list[tuple[int, float, float]] = []
        self.artifacts_started: float | None = None


@pytest.fixture
def timeline(monkeypatch: pytest.MonkeyPatch) -> Timeline:
    """Wrap the real hooks: nothing they do changes, they only leave timestamps."""
    record = Timeline()
    on_step_end, upload, artifacts = TrainerHooks.on_step_end, CheckpointStore.upload, train_module.upload_outputs

    def timed_step_end(self: TrainerHooks, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        record.step_ends.append((time.monotonic(), state.global_step))
        on_step_end(self, args, state, control, **kwargs)

    def timed_upload(self: CheckpointStore, local: Path, step: int, resolved_config: str) -> None:
        started = time.monotonic()
        upload(self, local, step, resolved_config)
        record.uploads.append((step, started, time.monotonic()))

    def timed_artifacts(*args: Any, **kwargs: Any) -> Any:
        record.artifacts_started = time.monotonic()
        return artifacts(*args, **kwargs)

    monkeypatch.setattr(TrainerHooks, "on_step_end", timed_step_end)
    monkeypatch.setattr(CheckpointStore, "upload", timed_upload)
    monkeypatch.setattr(train_module, "upload_outputs", timed_artifacts)
    return record


@pytest.fixture
def proxied(s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., S3Proxy]]:
    """Start a proxy to the bucket's server and point the in-process trainer at it."""
    proxies: list[S3Proxy] = []

    def start(**options: Any) -> S3Proxy:
        proxy = S3Proxy(s3_bucket.endpoint.url, "/checkpoints/", **options)
        proxies.append(proxy)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


def keys(s3_bucket: Any, prefix: str) -> list[str]:
    pages = s3_bucket.client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_training_goes_on_while_a_checkpoint_uploads(
    s3_bucket: Any,
    tiny_llama_uri: str,
    tmp_path: Path,
    run_trainer: Runner,
    timeline: Timeline,
    proxied: Callable[..., S3Proxy],
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(120))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["hyperparameters"]["maxSteps"] = 20
    raw["checkpointing"] = {"intervalSteps": 5, "keep": 2}
    proxy = proxied(delay=0.5)  # ~10 PUTs per checkpoint: 5 s and more per upload, well under 1 s per step

    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    assert result.termination["message"] == "trained 20 steps"
    assert proxy.matched > 0

    first_step, started, ended = timeline.uploads[0]
    assert first_step == 5 and ended - started > 4
    # A synchronous upload held step 6 back until checkpoint-5 was complete; now steps end meanwhile.
    during = [step for at, step in timeline.step_ends if started < at < ended]
    assert during and min(during) > first_step, (timeline.uploads, timeline.step_ends)

    uploaded = [step for step, _, _ in timeline.uploads]
    assert uploaded[-1] == 20 and uploaded == sorted(set(uploaded))  # newest last; a waiting one may be skipped
    assert timeline.artifacts_started is not None and timeline.uploads[-1][2] < timeline.artifacts_started

    checkpoint_keys = keys(s3_bucket, "out/run-1/checkpoints/")
    complete = sorted(int(k.split("/")[3].split("-")[1]) for k in checkpoint_keys if k.endswith("/_COMPLETE"))
    assert complete[-1] == 20 and len(complete) == 2  # keep: 2
    assert {int(k.split("/")[3].split("-")[1]) for k in checkpoint_keys} == set(complete)  # nothing partial
    assert list((tmp_path / "work" / "checkpoint-uploads").iterdir()) == []  # uploaded copies removed
    assert not list((tmp_path / "work" / "checkpoints").glob("checkpoint-*"))  # the uploader took every one


def test_a_failed_upload_stops_the_run_with_the_storage_error(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner, timeline: Timeline, proxied: Callable[..., S3Proxy]
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(120))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["hyperparameters"]["maxSteps"] = 300
    raw["checkpointing"] = {"intervalSteps": 5, "keep": 2}
    proxied(deny=True)  # the server refuses writes under checkpoints/ (a deny policy on that prefix)

    result = run_trainer(raw)
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.termination
    assert result.termination["code"] == "StorageAccessDenied", result.termination
    assert "out/run-1/checkpoints/checkpoint-5/" in result.termination["message"]
    assert timeline.step_ends[-1][1] < 300  # surfaced while training, not after the last step
    assert not [k for k in keys(s3_bucket, "out/run-1/") if k.endswith("_COMPLETE") or "/model/" in k]
    assert not keys(s3_bucket, "out/run-1/metrics.json")
