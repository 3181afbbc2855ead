"""Record-by-record attention (`training.segmented_attention`) computes what SDPA over the block-diagonal mask did.

What must not change: the outputs, gradients and loss curve of a flattened micro-batch; and everything that is
not one (a padded evaluation batch, generation with a KV cache) must run transformers' own SDPA unchanged.
Stated tolerance: logits within 1e-4 absolute, gradients within 1e-5, every logged loss of an 8-step fixed-seed
run (tiny Llama, LoRA and full, gradient accumulation 2) within 1e-4 relative. Each equality test also checks
which path ran (the record bounds the mask check found, or none), so none can pass by falling back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_trainer.training import segmented_attention
from finetune_trainer.training.modeling import load_model

from tests.trainer.test_loss_path import STEPS, assert_same_curve, config_for, loss_curve


def tiny_llama(implementation: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_cache=False,
                         attn_implementation=implementation)  # fmt: skip
    return LlamaForCausalLM(config)


def flattened_batch(lengths: tuple[int, ...]) -> dict[str, Any]:
    from transformers import DataCollatorWithFlattening

    generator = torch.Generator().manual_seed(1)
    records = []
    for length in lengths:
        ids = torch.randint(3, 300, (length,), generator=generator).tolist()
        records.append({"input_ids": ids, "labels": [-100] * (length // 3) + ids[length // 3 :]})
    return dict(DataCollatorWithFlattening(return_position_ids=True)(records))  # type: ignore[no-untyped-call]


def forward_backward(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    output = model(**batch)
    output.loss.backward()
    return output.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_record_bounds_follow_the_position_ids() -> None:
    assert segmented_attention.record_bounds([0, 1, 2, 0, 1, 0, 1, 2, 3]) == [0, 3, 5, 9]
    assert segmented_attention.record_bounds([0, 1, 2]) == [0, 3]
    assert segmented_attention.record_bounds([5, 6, 0]) == [0, 2, 3]  # any break in the count starts a record


def test_applies_on_cpu_to_full_attention_families_only() -> None:
    assert segmented_attention.applies("llama", cuda=False)
    assert not segmented_attention.applies("llama", cuda=True)  # GPUs: flash-attn's varlen kernel, not measured
    assert not segmented_attention.applies("gemma2", cuda=False)  # sliding windows and soft-capping
    assert not segmented_attention.applies(None, cuda=False)


@pytest.mark.parametrize("lengths", [(7, 20, 13), (1, 9, 1, 30, 2)])
def test_flattened_batch_matches_sdpa_over_the_block_diagonal_mask(lengths: tuple[int, ...]) -> None:
    batch = flattened_batch(lengths)
    stock_logits, stock_grads = forward_backward(tiny_llama("sdpa"), batch)
    segmented_attention._verified = None
    mine_logits, mine_grads = forward_backward(tiny_llama(segmented_attention.register()), batch)
    assert segmented_attention._verified is not None
    bounds = segmented_attention._verified[1]
    assert bounds is not None and len(bounds) == len(lengths) + 1  # the record path ran, one call per record
    assert torch.allclose(mine_logits, stock_logits, atol=1e-4), (mine_logits - stock_logits).abs().max()
    for name, grad in stock_grads.items():
        assert torch.allclose(mine_grads[name], grad, atol=1e-5), name


def test_a_padded_batch_runs_transformers_sdpa_unchanged() -> None:
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as an evaluation batch of different lengths
    with torch.no_grad():
        stock = tiny_llama("sdpa")(input_ids=ids, attention_mask=mask).logits
        segmented_attention._verified = None
        mine = tiny_llama(segmented_attention.register())(input_ids=ids, attention_mask=mask).logits
    assert segmented_attention._verified is None  # two rows: never offered to the record path
    assert torch.equal(mine, stock)


def test_generation_with_a_cache_matches_sdpa() -> None:
    prompt = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(3))
    outputs = []
    for implementation in ("sdpa", segmented_attention.register()):
        model = tiny_llama(implementation)
        model.config.use_cache = True
        model.generation_config.pad_token_id = 0
        outputs.append(model.generate(prompt, max_new_tokens=8, do_sample=False))
    assert torch.equal(outputs[0], outputs[1])


def test_a_mask_other_than_the_records_block_diagonal_is_refused_by_the_check() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1]])
    size = positions.shape[1]
    causal = torch.ones(size, size, dtype=torch.bool).tril()[None, None]  # causal across records: not ours
    segmented_attention._verified = None
    assert segmented_attention._bounds_if_block_diagonal(causal, positions) is None
    block = causal.clone()
    block[0, 0, 3:, :3] = False
    assert segmented_attention._bounds_if_block_diagonal(block, positions) == [0, 3, 5]


def test_load_model_picks_it_on_cpu_for_a_causal_llama(tiny_llama_folder: Path) -> None:
    model = load_model(config_for(tiny_llama_folder, "lora"), tiny_llama_folder, None, "fp32")
    assert model.config._attn_implementation == segmented_attention.NAME


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fixed_seed_loss_curve_matches_dense_attention(
    method: str, tiny_llama_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segmented_attention._verified = None
    records, _ = loss_curve(tiny_llama_folder, method, True, tmp_path / "records")
    assert segmented_attention._verified is not None and segmented_attention._verified[1] is not None
    monkeypatch.setattr(segmented_attention, "applies", lambda model_type, cuda: False)  # transformers' SDPA
    segmented_attention._verified = None
    dense, _ = loss_curve(tiny_llama_folder, method, True, tmp_path / "dense")
    assert segmented_attention._verified is None  # the dense run never called the record path
    assert len(records) == len(dense) == STEPS
    assert_same_curve(dense, records)
