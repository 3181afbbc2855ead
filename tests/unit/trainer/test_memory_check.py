"""Where the memory plan's budget comes from (the training pods' placement) and when a plan is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_trainer.config import TrainerConfig, parse_config
from finetune_trainer.core.errors import ConfigInvalid, PlanDoesNotFit
from finetune_trainer.memory.check import Placement, budget_of, check_fit, parse_quantity

LLAMA_3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
}


def _config(method: str, batch: int | str = 1, **hyperparameters: object) -> TrainerConfig:
    return parse_config(
        {
            "job": {"namespace": "ns", "name": "j", "run": 1},
            "baseModel": {"uri": "s3://models/llama-3-8b/"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "chat", "maxSeqLength": 2048},
            "method": {"type": method},
            "hyperparameters": {"batchSize": batch, **hyperparameters},
            "output": {"uri": "s3://out/", "runUri": "s3://out/run-1/"},
        },
        "test",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16Gi", 16 << 30), ("512Mi", 512 << 20), ("8G", 8 * 10**9), ("1e9", 10**9), ("1024", 1024)],
)
def test_kubernetes_quantities(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


def test_a_bad_quantity_names_the_field() -> None:
    with pytest.raises(ConfigInvalid, match=r"resources\.memory"):
        parse_quantity("lots")


def test_budgets_follow_the_placement() -> None:
    named = budget_of(Placement(gpus=8, gpu_product="NVIDIA-H100-80GB-HBM3"))
    assert named is not None and named.strict and named.device.name == "H100-80G"
    unnamed = budget_of(Placement(gpus=1))
    assert unnamed is not None and not unnamed.strict and "largest known" in unnamed.device.name
    cpu = budget_of(Placement(gpus=0, memory_limit="6Gi"))
    assert cpu is not None and cpu.strict and cpu.device.memory_bytes == 6 << 30
    assert budget_of(Placement(gpus=0)) is None  # a CPU pod without a limit: nothing to check against


def test_a_full_8b_fine_tune_is_refused_on_a_named_gpu_with_the_fixes(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_8B))
    placement = Placement(gpus=8, gpu_product="NVIDIA-H100-80GB-HBM3")
    with pytest.raises(PlanDoesNotFit) as refused:
        check_fit(_config("full"), tmp_path, 2048, None, placement)
    assert "does not fit" in str(refused.value) and "H100-80G" in str(refused.value)
    assert "Would fit" in str(refused.value)  # the message carries the changes that would make it fit
    lora = check_fit(_config("lora"), tmp_path, 2048, None, placement)
    assert lora is not None and lora.fits


def test_with_no_gpu_type_named_only_a_plan_no_gpu_can_hold_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_8B))
    with pytest.raises(PlanDoesNotFit, match="any GPU in the table"):
        check_fit(_config("full", batch=8, gradientCheckpointing=False), tmp_path, 2048, None, Placement(gpus=1))
    fits_somewhere = check_fit(_config("lora"), tmp_path, 2048, None, Placement(gpus=1))
    assert fits_somewhere is not None and fits_somewhere.fits


def test_an_unknown_architecture_is_not_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    assert check_fit(_config("lora"), tmp_path, 128, None, Placement(gpus=1, gpu_product="T4")) is None


def test_unset_gradient_checkpointing_is_turned_on_only_where_the_plan_needs_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_8B))
    b200 = Placement(gpus=1, gpu_product="NVIDIA-B200")
    full = check_fit(_config("full", batch=8), tmp_path, 2048, None, b200)  # 128 GiB of states + activations
    assert full is not None and full.fits and full.setup.gradient_checkpointing
    assert full.to_status()["gradientCheckpointing"] is True and "needed to fit" in full.message()
    small = check_fit(_config("lora", batch=1), tmp_path, 256, None, b200)
    assert small is not None and small.fits and not small.setup.gradient_checkpointing
    with pytest.raises(PlanDoesNotFit):  # turned off by the user: refused, with the fix named
        check_fit(_config("full", batch=8, gradientCheckpointing=False), tmp_path, 2048, None, b200)


def test_batch_size_auto_is_decided_and_recorded_in_the_plan(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_8B))
    h100 = Placement(gpus=1, gpu_product="NVIDIA-H100-80GB-HBM3")
    cfg = _config("lora", batch="auto", effectiveBatchSize=32)
    result = check_fit(cfg, tmp_path, 2048, None, h100)
    assert result is not None and result.fits
    status = result.to_status()
    micro, accumulation = status["microBatch"], status["gradientAccumulationSteps"]
    assert micro * accumulation == 32 and 1 <= micro < 32 and not status["gradientCheckpointing"]
    assert micro == max(b for b in range(1, 33) if 32 % b == 0 and b <= result.max_micro_batch)
    assert f"batchSize auto -> {micro} x {accumulation} accumulated" in status["summary"]
    # with checkpointing forced on, more sequences fit per micro-batch
    on = check_fit(_config("lora", batch="auto", effectiveBatchSize=32, gradientCheckpointing=True), tmp_path, 2048,
                   None, h100)  # fmt: skip
    assert on is not None and on.setup.micro_batch > micro


def test_the_gpu_table_rows_of_the_chart_replace_and_add_budgets(tmp_path: Path) -> None:
    """validation.gpuMemory -> --gpu-memory: a reserve on a known GPU, and a MIG slice keyed by its node label."""
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_8B))
    mig = "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb"
    rows = ("H100-80G=60Gi", f"{mig}=19Gi")
    reserved = budget_of(Placement(gpus=1, gpu_product="NVIDIA-H100-80GB-HBM3", gpu_memory=rows))
    assert reserved is not None and reserved.device.memory_bytes == 60 << 30 and reserved.device.bf16
    slice_ = budget_of(Placement(gpus=1, gpu_product=mig, gpu_memory=rows))
    assert slice_ is not None and slice_.strict and slice_.device.memory_bytes == 19 << 30
    without = budget_of(Placement(gpus=1, gpu_product=mig))
    assert without is not None and without.device.name == "A100-40G"  # the whole GPU: a wrong, larger budget
    lora = _config("lora", batch=1, gradientCheckpointing=False)
    assert check_fit(lora, tmp_path, 2048, None, Placement(gpus=1, gpu_product=mig)) is not None
    with pytest.raises(PlanDoesNotFit, match=r"19\.0 GiB"):  # the 8B model's bf16 weights alone are 15 GiB
        check_fit(lora, tmp_path, 2048, None, Placement(gpus=1, gpu_product=mig, gpu_memory=rows))
    with pytest.raises(ConfigInvalid, match="--gpu-memory"):
        budget_of(Placement(gpus=1, gpu_product=mig, gpu_memory=("H100-80G",)))
