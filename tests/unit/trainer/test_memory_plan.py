"""The memory plan (finetune_trainer.memory.plan): parameter counts from config.json equal the real models'
(instantiated on torch's meta device, so an 8B model costs nothing), the breakdown behaves as the formulas
say, the 8B full fine-tune under DDP is refused with a suggestion that fits, and the GPU table resolves
node-label product names."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from finetune_trainer.memory import gpus
from finetune_trainer.memory.estimate import Method, Setup, estimate, largest_micro_batch, trainable_parameters
from finetune_trainer.memory.gpus import GPUS, GiB, accelerator, cpu
from finetune_trainer.memory.plan import auto_batch, plan
from finetune_trainer.memory.shapes import UnsupportedModel, model_shape

LLAMA3_8B: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
SMOLLM2_135M: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
MISTRAL_7B: dict[str, Any] = {
    "model_type": "mistral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}
QWEN2_05B: dict[str, Any] = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
QWEN3_06B: dict[str, Any] = {
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": True,
}
GEMMA_2B: dict[str, Any] = {
    "model_type": "gemma",
    "vocab_size": 256000,
    "hidden_size": 2048,
    "intermediate_size": 16384,
    "num_hidden_layers": 18,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "max_position_embeddings": 8192,
}
PHI3_MINI: dict[str, Any] = {
    "model_type": "phi3",
    "vocab_size": 32064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
MIXTRAL_SMALL: dict[str, Any] = {  # Mixtral's shape, shrunk (the real 8x7B is the same formula)
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "tie_word_embeddings": False,
}
GPT2: dict[str, Any] = {
    "model_type": "gpt2",
    "vocab_size": 50257,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_positions": 1024,
}
MINILM_L6: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
ROBERTA_BASE: dict[str, Any] = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
}
DISTILBERT: dict[str, Any] = {
    "model_type": "distilbert",
    "vocab_size": 30522,
    "dim": 768,
    "hidden_dim": 3072,
    "n_layers": 6,
    "n_heads": 12,
    "max_position_embeddings": 512,
}
H100 = GPUS["H100-80G"]


def real_parameters(config: dict[str, Any], num_labels: int | None = None) -> int:
    """sum(p.numel()) of the transformers model built from `config` on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    fields = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    with torch.device("meta"):
        if num_labels is None:
            model = AutoModelForCausalLM.from_config(hf_config)
        else:
            hf_config.num_labels = num_labels
            model = AutoModelForSequenceClassification.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


def test_known_parameter_counts() -> None:
    assert model_shape(LLAMA3_8B).parameters == 8_030_261_248
    assert model_shape(SMOLLM2_135M).parameters == 134_515_008
    assert model_shape(MISTRAL_7B).parameters == 7_241_732_096
    assert model_shape(GPT2).parameters == 124_439_808


@pytest.mark.parametrize(
    "config",
    [LLAMA3_8B, SMOLLM2_135M, MISTRAL_7B, QWEN2_05B, QWEN3_06B, GEMMA_2B, PHI3_MINI, MIXTRAL_SMALL, GPT2],
    ids=lambda c: c["model_type"] + "-" + str(c.get("hidden_size", c.get("n_embd"))),
)
def test_causal_lm_parameters_equal_the_real_model(config: dict[str, Any]) -> None:
    assert model_shape(config).parameters == real_parameters(config)


@pytest.mark.parametrize(
    "config",
    [MINILM_L6, ROBERTA_BASE, DISTILBERT, SMOLLM2_135M, QWEN2_05B],
    ids=lambda c: c["model_type"] + "-" + str(c.get("hidden_size", c.get("dim"))),
)
def test_classifier_parameters_equal_the_real_model(config: dict[str, Any]) -> None:
    assert model_shape(config, num_labels=4).parameters == real_parameters(config, num_labels=4)


def test_tiny_model_from_devtools() -> None:
    import torch
    from finetune_trainer.devtools import tiny
    from transformers import LlamaForCausalLM

    tokenizer = tiny.train_tokenizer(tiny.word_corpus(size=50), vocab_size=280)
    config = tiny.llama_config(tokenizer, hidden_size=64, num_hidden_layers=2)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert model_shape(config.to_dict()).parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("targets", [("all-linear",), ("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj")])
def test_lora_trainable_parameters_equal_peft(targets: tuple[str, ...]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in SMOLLM2_135M.items() if k != "model_type"}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **fields))
    target: str | list[str] = "all-linear" if targets == ("all-linear",) else list(targets)
    wrapped = get_peft_model(model, LoraConfig(r=16, target_modules=target, task_type="CAUSAL_LM"))
    trainable, _ = wrapped.get_nb_trainable_parameters()
    assert trainable_parameters(model_shape(SMOLLM2_135M), Method("lora", 16, targets)) == trainable


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(UnsupportedModel, match="t5"):
        model_shape({"model_type": "t5", "d_model": 512})


def test_full_fine_tune_costs_16_bytes_per_parameter_before_activations() -> None:
    shape = model_shape(LLAMA3_8B)
    b = estimate(shape, Setup(method=Method("full"), precision="bf16", micro_batch=1, seq_length=512), H100)
    assert b.weights + b.gradients + b.optimizer == 16 * shape.parameters


def test_lora_is_far_smaller_than_full() -> None:
    shape = model_shape(LLAMA3_8B)
    setup = Setup(precision="bf16", micro_batch=1, seq_length=1024)
    full = estimate(shape, replace(setup, method=Method("full")), H100)
    lora = estimate(shape, setup, H100)
    qlora = estimate(shape, replace(setup, method=Method("qlora")), H100)
    assert lora.gradients + lora.optimizer < (full.gradients + full.optimizer) / 50
    assert lora.weights < full.weights / 1.9
    # 4-bit blocks, but prepare_model_for_kbit_training casts embeddings, head and norms to fp32
    assert qlora.weights < lora.weights / 2
    assert qlora.total < lora.total < full.total / 3


def test_fsdp_divides_weights_gradients_and_optimizer_by_the_shards() -> None:
    shape = model_shape(LLAMA3_8B)
    setup = Setup(method=Method("full"), precision="bf16", micro_batch=1, seq_length=1024, world_size=8)
    ddp = estimate(shape, setup, H100)
    fsdp = estimate(shape, replace(setup, sharding="fsdp"), H100)
    assert fsdp.optimizer == pytest.approx(ddp.optimizer / 8, rel=1e-6)
    assert fsdp.weights < ddp.weights / 4
    assert fsdp.gradients < ddp.gradients / 8  # DDP also keeps its reducer buckets
    assert fsdp.activations < ddp.activations  # no autocast copies of fp32 weights: FSDP gathers them in bf16


def test_gradient_checkpointing_reduces_activations() -> None:
    for method in ("full", "lora", "qlora"):
        setup = Setup(method=Method(method), precision="bf16", micro_batch=4, seq_length=2048)  # type: ignore[arg-type]
        plain = estimate(model_shape(LLAMA3_8B), setup, H100)
        checkpointed = estimate(model_shape(LLAMA3_8B), replace(setup, gradient_checkpointing=True), H100)
        assert checkpointed.activations < plain.activations / 3
        assert checkpointed.weights == plain.weights


def test_activations_grow_with_tokens_and_the_peak_with_them() -> None:
    shape = model_shape(SMOLLM2_135M)
    totals = [estimate(shape, Setup(micro_batch=b, seq_length=1024), H100).total for b in (1, 2, 4, 8, 16)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)


def test_largest_micro_batch_is_the_boundary_and_monotonic_in_memory() -> None:
    shape = model_shape(MISTRAL_7B)
    setup = Setup(precision="bf16", seq_length=2048)
    previous = 0
    for name in ("L4", "L40S", "A100-80G", "H200-141G"):
        device = GPUS[name]
        largest = largest_micro_batch(shape, setup, device)
        assert largest >= previous
        if largest:
            assert estimate(shape, setup, device, largest).total <= device.memory_bytes
        assert estimate(shape, setup, device, largest + 1).total > device.memory_bytes
        previous = largest
    assert previous >= 1


def test_8b_full_fine_tune_under_ddp_does_not_fit_and_says_what_would() -> None:
    setup = Setup(
        method=Method("full"), precision="bf16", world_size=32, micro_batch=2, gradient_accumulation=8, seq_length=4096
    )
    result = plan(LLAMA3_8B, setup, H100)
    assert not result.fits and result.headroom < 0
    assert result.breakdown.weights + result.breakdown.optimizer > 80 * GiB  # fp32 weights + Adam alone
    assert result.max_micro_batch == 0
    fitting = [s for s in result.suggestions if s.fits]
    assert fitting, result.message()
    assert all(s.total <= H100.memory_bytes for s in fitting)
    assert any("lora" in s.change for s in fitting)
    assert any("fsdp" in s.change for s in fitting)
    message = result.message()
    assert "does not fit" in message and "GiB" in message and "->" in message


def test_a_plan_that_fits_has_no_suggestions_and_reports_headroom() -> None:
    result = plan(SMOLLM2_135M, Setup(micro_batch=4, seq_length=512), GPUS["L4"])
    assert result.fits and result.headroom > 0 and not result.suggestions
    assert result.max_micro_batch >= 4
    status = result.to_status()
    assert status["fits"] is True and status["budgetBytes"] == GPUS["L4"].memory_bytes
    assert status["estimateBytes"] + status["headroomBytes"] == status["budgetBytes"]
    assert set(status["breakdown"]) == {"weights", "gradients", "optimizer", "activations", "overhead"}
    assert status["precision"] == "bf16"


def test_auto_batch_takes_the_largest_fitting_micro_batch_and_accumulates_the_rest() -> None:
    shape = model_shape(MISTRAL_7B)
    setup = Setup(precision="bf16", seq_length=2048)
    device = GPUS["A100-80G"]
    largest = largest_micro_batch(shape, setup, device)
    assert 1 < largest < 16
    batch, accumulation = auto_batch(shape, setup, device, 16) or (0, 0)
    assert batch * accumulation == 16 and batch <= largest and 16 % batch == 0
    assert auto_batch(shape, setup, device, 1) == (1, 1)
    assert auto_batch(model_shape(LLAMA3_8B), replace(setup, method=Method("full")), GPUS["T4"], 16) is None


def test_smaller_batch_suggestion_keeps_the_effective_batch() -> None:
    setup = Setup(method=Method("lora"), precision="bf16", micro_batch=16, seq_length=4096)
    result = plan(MISTRAL_7B, setup, GPUS["A100-80G"])
    assert not result.fits
    batch = [s for s in result.suggestions if s.change.startswith("hyperparameters.batchSize")]
    assert batch and batch[0].fits
    micro, accumulation = (int(n) for n in re.findall(r"\d+", batch[0].change))
    assert micro < 16 and micro * accumulation == 16


def test_precision_auto_follows_the_device() -> None:
    assert plan(SMOLLM2_135M, Setup(), GPUS["T4"]).precision == "fp16"
    assert plan(SMOLLM2_135M, Setup(), GPUS["A10G"]).precision == "bf16"
    assert plan(SMOLLM2_135M, Setup(), cpu(8 * GiB)).precision == "fp32"


def test_cpu_budget_is_the_pod_limit_and_offers_no_gpu_only_changes() -> None:
    result = plan(SMOLLM2_135M, Setup(method=Method("full"), micro_batch=32, seq_length=2048), cpu(4 * GiB))
    assert result.budget == 4 * GiB and not result.fits
    assert not any("qlora" in s.change or "fsdp" in s.change for s in result.suggestions)


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("NVIDIA-A100-SXM4-80GB", "A100-80G"),
        ("NVIDIA-A100-PCIE-40GB", "A100-40G"),
        ("NVIDIA-H100-80GB-HBM3", "H100-80G"),
        ("NVIDIA-H100-NVL", "H100-94G"),
        ("NVIDIA-H200", "H200-141G"),
        ("Tesla-T4", "T4"),
        ("NVIDIA-L4", "L4"),
        ("NVIDIA-L40S", "L40S"),
        ("NVIDIA-A10G", "A10G"),
        ("Tesla-V100-SXM2-32GB", "V100-32G"),
        ("L40S", "L40S"),
    ],
)
def test_product_labels_resolve_to_the_table(label: str, name: str) -> None:
    found = accelerator(label)
    assert found is not None and found.name == name


def test_table_overrides() -> None:
    table = gpus.with_overrides({"A100-80G": 70 * GiB, "MIG-3g.40gb": 40 * GiB})
    assert table["A100-80G"].memory_bytes == 70 * GiB and table["A100-80G"].bf16
    assert accelerator("MIG-3g.40gb", table) == table["MIG-3g.40gb"]
    assert accelerator("some-unknown-gpu") is None
    assert GPUS["A100-80G"].memory_bytes == 81920 << 20  # the default table is unchanged


def test_record_attention_on_cpu_drops_the_quadratic_mask_term() -> None:
    """On CPU a Llama attends record by record (no T x T mask saved per layer): activations grow linearly with
    the micro-batch's tokens; on a GPU (SDPA over the block-diagonal mask) they grow faster than linearly."""
    shape = model_shape(SMOLLM2_135M)

    def activations(device: Any, batch: int) -> int:
        return estimate(shape, Setup(method=Method("lora"), precision="fp32", micro_batch=batch, seq_length=512),
                        device).activations  # fmt: skip

    on_cpu = [activations(cpu(64 * GiB), batch) for batch in (2, 4, 8)]
    on_gpu = [activations(H100, batch) for batch in (2, 4, 8)]
    assert on_cpu[2] - on_cpu[1] == pytest.approx(2 * (on_cpu[1] - on_cpu[0]), rel=0.01)  # linear in tokens
    assert on_gpu[2] - on_gpu[1] > 2.2 * (on_gpu[1] - on_gpu[0])  # the mask's T^2 term
    assert on_cpu[2] < on_gpu[2]
