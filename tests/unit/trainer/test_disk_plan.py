"""The training pod's local disk plan (finetune_trainer.memory.disk), from tables: what each method writes."""

from __future__ import annotations

from finetune_trainer.memory.disk import CHECKPOINTS_AT_ONCE, MARGIN_BYTES, GiB, disk_plan


def test_a_full_fine_tune_keeps_the_weights_and_the_optimizer_three_times() -> None:
    plan = disk_plan(model_bytes=16 * GiB, data_bytes=GiB, method="full", parameters=8 * 10**9)
    assert plan.checkpoint_bytes == 16 * GiB + 8 * 8 * 10**9  # weights + AdamW's two fp32 moments
    assert plan.output_bytes == 16 * GiB
    subtotal = 16 * GiB + GiB + CHECKPOINTS_AT_ONCE * plan.checkpoint_bytes + 16 * GiB
    assert plan.total_bytes == int(subtotal * 1.25) + MARGIN_BYTES
    assert plan.to_status()["totalBytes"] == plan.total_bytes and plan.to_status()["checkpointsAtOnce"] == 3


def test_an_adapter_needs_little_beyond_the_base_model() -> None:
    plan = disk_plan(
        model_bytes=16 * GiB, data_bytes=GiB, method="lora", parameters=8 * 10**9, trainable_parameters=4 * 10**7
    )
    assert plan.checkpoint_bytes == 12 * 4 * 10**7 and plan.output_bytes == 4 * 4 * 10**7
    assert 17 * GiB < plan.total_bytes < 25 * GiB  # the base model, the data and the margin


def test_without_a_memory_plan_the_models_files_stand_in_for_its_size() -> None:
    full = disk_plan(model_bytes=2 * GiB, data_bytes=0, method="full")
    assert full.checkpoint_bytes == 2 * GiB + 8 * GiB  # 1 G parameters of 2 bytes, 8 bytes of moments each
    adapter = disk_plan(model_bytes=2 * GiB, data_bytes=0, method="qlora")
    assert adapter.checkpoint_bytes == 12 * int(GiB * 0.02)
