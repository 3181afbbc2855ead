"""Checkpoint index and retention, and the progress throttle and payload."""

from __future__ import annotations

import pytest
from finetune_trainer.training.checkpoints import MARKER, index_from_keys, select_for_deletion, uploads
from finetune_trainer.training.progress import Reporter, Throttle, make_reporter, merged, progress_payload


def keys(*pairs: tuple[int, bool]) -> list[str]:
    out = []
    for step, complete in pairs:
        out.append(f"out/run-1/checkpoints/checkpoint-{step}/model.safetensors")
        if complete:
            out.append(f"out/run-1/checkpoints/checkpoint-{step}/{MARKER}")
    return out


def test_index_only_counts_marked_checkpoints() -> None:
    index = index_from_keys([*keys((10, True), (20, True), (30, False)), "out/run-1/other/file"])
    assert index.steps == {10, 20, 30} and index.complete == {10, 20}
    assert index.newest_complete == 20


def test_retention_keeps_newest_complete_and_in_flight_upload() -> None:
    index = index_from_keys(keys((10, True), (15, False), (20, True), (30, True), (40, False)))
    assert select_for_deletion(index, keep=2) == [10, 15]
    assert select_for_deletion(index, keep=5) == [15]
    assert select_for_deletion(index_from_keys(keys((5, False))), keep=1) == []


def test_each_rank_uploads_its_rng_state_and_rank_0_the_rest() -> None:
    files = ["model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"]
    assert [f for f in files if uploads(f, 0, 2)] == files[:4]
    assert [f for f in files if uploads(f, 1, 2)] == ["rng_state_1.pth"]
    assert uploads("rng_state.pth", 0, 1) and uploads("adapter_model.safetensors", 0, 1)


def test_each_rank_uploads_its_own_fsdp_shards() -> None:
    """A sharded checkpoint: `__<rank>_0.distcp` (model and optimizer) is written by that rank alone and may
    exist only on its node; the DCP metadata and the rest are rank 0's."""
    files = [".metadata", "__0_0.distcp", "__1_0.distcp", "__12_0.distcp", "scheduler.pt", "trainer_state.json"]
    assert [f for f in files if uploads(f, 0, 16)] == [
        ".metadata",
        "__0_0.distcp",
        "scheduler.pt",
        "trainer_state.json",
    ]
    assert [f for f in files if uploads(f, 1, 16)] == ["__1_0.distcp"]
    assert [f for f in files if uploads(f, 12, 16)] == ["__12_0.distcp"]


def test_throttle_bounds() -> None:
    throttle = Throttle(min_interval=5, max_interval=30)
    assert throttle.offer(100.0)
    assert not throttle.offer(102.0)
    assert not throttle.overdue(120.0)
    assert throttle.overdue(131.0)
    assert throttle.offer(106.0)
    assert throttle.offer(107.0, force=True)


def test_payload_shape_and_eta() -> None:
    patch = progress_payload(
        2,
        "training",
        1_800_000_000.0,
        step=420,
        total=1000,
        epoch=1.2566,
        loss=1.31234567,
        learning_rate=0.000171234,
        tokens_per_second=10234.7,
        seconds_per_step=0.5,
        last_checkpoint=400,
    )
    progress = patch["status"]["progress"]
    assert progress["percent"] == 42 and progress["totalSteps"] == 1000 and progress["lastCheckpointStep"] == 400
    assert progress["tokensPerSecond"] == 10234 and progress["learningRate"] == 0.0001712
    assert progress["estimatedFinishTime"] == "2027-01-15T08:04:50Z"
    assert progress["updatedAt"] == "2027-01-15T08:00:00Z" and progress["stage"] == "training"


def test_reporter_throttles_and_survives_sink_failures() -> None:
    now = [0.0]
    sent: list[dict[str, object]] = []

    def sink(patch: dict[str, object]) -> None:
        sent.append(patch)
        if len(sent) == 2:
            raise RuntimeError("API down")

    reporter = Reporter(1, sink, Throttle(5, 30), clock=lambda: now[0])
    for second in range(0, 12):
        now[0] = float(second)
        reporter.report("training", step=second, total=100)
    assert len(sent) == 3 and reporter.failures == 1  # at 0, 5, 10
    now[0] = 45.0
    reporter.report("training", step=50, total=100)
    reporter.report("evaluating")  # a new stage is never held back
    assert sent[-1]["status"]["progress"]["stage"] == "evaluating"  # type: ignore[index]


def test_first_training_report_is_not_throttled_after_loading() -> None:
    now = [0.0]
    sent: list[dict[str, object]] = []
    reporter = Reporter(1, sent.append, Throttle(5, 30), clock=lambda: now[0])
    reporter.report("loading")
    now[0] = 1.0
    reporter.report("training", step=1, total=10)
    now[0] = 2.0
    reporter.report("training", step=2, total=10)
    assert [p["status"]["progress"].get("step") for p in sent] == [None, 1]  # type: ignore[index,attr-defined]


def test_reports_merge_into_one_document_as_a_merge_patch_would() -> None:
    """The ConfigMap holds the whole document: fields a report leaves out stay, null removes, NaN is left out."""
    first = {"run": 2, "stage": "training", "step": 4, "loss": 1.5, "tracking": {"mlflow": {"runId": "r"}}}
    later = {"stage": "evaluating", "step": 10, "loss": float("nan"), "tracking": {"degraded": {"reason": "Down"}}}
    document = merged(merged({}, first), later)
    assert document == {
        "run": 2,
        "stage": "evaluating",
        "step": 10,
        "tracking": {"mlflow": {"runId": "r"}, "degraded": {"reason": "Down"}},
    }
    assert merged(document, {"tracking": None, "validationLoss": None}) == {"run": 2, "stage": "evaluating", "step": 10}


def test_without_a_named_config_map_progress_is_only_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator names the ConfigMap (FTO_PROGRESS_CONFIGMAP); nothing else in the cluster is written."""
    monkeypatch.delenv("FTO_PROGRESS_CONFIGMAP", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setattr("finetune_trainer.training.progress.in_cluster", lambda: True)
    assert make_reporter(1, "team-a", enabled=True).sink.__name__ == "log_sink"
