"""The fused LoRA layer (`training.fused_lora`) computes what peft's `lora.Linear` computes, and only where it may.

What must not change: outputs, gradients and the loss curve of a LoRA run. The fused path applies the scaling to
the rank-r factors and accumulates the adapter into the base product, so values agree to float32 rounding, not
bit for bit. Stated tolerance: logits within 1e-5 absolute, parameter gradients within 1e-6 (the adapter's B
drawn non-zero so its path contributes), a layer's input gradient (values up to ~8) within 1e-5, every logged loss of an
8-step fixed-seed run (tiny Llama, LoRA, gradient accumulation 2) within 1e-4 relative; each with the adapter's
dropout off and on (a fixed seed draws the same masks on both paths). Each equality test counts the fused calls,
so none can pass by falling back; each fallback test counts none.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_trainer.training import fused_lora

from tests.trainer.test_loss_path import STEPS, assert_same_curve, loss_curve
from tests.trainer.test_record_attention import flattened_batch


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A list that grows by one for every call that took the fused path."""
    calls: list[int] = []
    fused_lora.fuse(torch.nn.Sequential())  # builds the autograd function
    function = fused_lora._FUNCTION

    class Counting:
        @staticmethod
        def apply(*args: Any) -> Any:
            calls.append(1)
            return function.apply(*args)

    monkeypatch.setattr(fused_lora, "_FUNCTION", Counting)
    yield calls


def lora_llama(dropout: float = 0.0, bias: bool = False) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_cache=False, mlp_bias=bias,
                         attention_bias=bias)  # fmt: skip
    model = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout, target_modules="all-linear")
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)  # peft starts B at zero: the adapter would add nothing
    return model


def forward_backward(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # the adapter's dropout draws the same masks on both paths
    output = model(**batch)
    output.loss.backward()
    return output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("bias", "dropout"), [(False, 0.0), (True, 0.0), (False, 0.1)])
def test_outputs_and_gradients_match_peft(bias: bool, dropout: float, fused_calls: list[int]) -> None:
    batch = flattened_batch((7, 20, 13))
    model = lora_llama(dropout=dropout, bias=bias)
    assert model.training
    stock_logits, stock_grads = forward_backward(model, batch)
    assert fused_lora.fuse(model) == 14  # 7 linear layers in each of 2 blocks
    assert not fused_calls
    logits, grads = forward_backward(model, batch)
    assert len(fused_calls) == 14
    assert torch.allclose(logits, stock_logits, atol=1e-5), (logits - stock_logits).abs().max()
    assert grads.keys() == stock_grads.keys() and any("lora_A" in n for n in grads)
    for name, grad in stock_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-6), name


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_input_gradient_matches_peft(dropout: float, fused_calls: list[int]) -> None:
    """A layer whose input needs a gradient (every layer above the first) gets the same one: with dropout, the
    base's part and the adapter's part through the dropout's mask, added by autograd."""
    layer = lora_llama(dropout=dropout).base_model.model.model.layers[0].mlp.up_proj
    x = torch.randn(2, 5, 32, requires_grad=True)
    torch.manual_seed(5)
    stock = torch.autograd.grad(layer(x).square().sum(), x)[0]
    fused_lora.fuse(layer)
    torch.manual_seed(5)
    fused = torch.autograd.grad(layer(x).square().sum(), x)[0]
    assert fused_calls and torch.allclose(fused, stock, atol=1e-5), (fused - stock).abs().max()
    if dropout:
        torch.manual_seed(6)  # another mask: another gradient (the mask is applied, not ignored)
        assert not torch.allclose(torch.autograd.grad(layer(x).square().sum(), x)[0], stock, atol=1e-3)


def test_fuse_is_idempotent_and_a_deep_copy_computes_with_its_own_weights(fused_calls: list[int]) -> None:
    model = lora_llama()
    assert fused_lora.fuse(model) == 14
    assert fused_lora.fuse(model) == 0
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    twin = copy.deepcopy(layer)
    assert fused_lora.is_fused(twin) and twin.forward.__self__ is twin
    with torch.no_grad():
        twin.lora_B["default"].weight.zero_()
        twin.base_layer.weight.zero_()
    x = torch.randn(3, 32)
    assert torch.equal(twin(x), torch.zeros(3, 32))  # the copy's weights, not the original's
    assert not torch.equal(layer(x), torch.zeros(3, 32))
    assert len(fused_calls) == 2


def test_a_disabled_adapter_runs_the_base_only_through_peft(fused_calls: list[int]) -> None:
    """The DPO reference pass: `disable_adapter()` must give the base model's own output."""
    batch = flattened_batch((9, 11))
    model = lora_llama()
    fused_lora.fuse(model)
    with torch.no_grad(), model.disable_adapter():
        reference = model(**batch).logits
    assert not fused_calls
    with torch.no_grad():
        base = model.get_base_model()
        for module in model.modules():
            if hasattr(module, "lora_B"):
                module.lora_B["default"].weight.zero_()
        assert torch.allclose(base(**batch).logits, reference, atol=1e-6)


def test_dropout_in_eval_mode_is_the_identity(fused_calls: list[int]) -> None:
    """Evaluation (model.eval()): the dropout returns its input itself, and the output is the dropout-free one."""
    batch = flattened_batch((9, 11))
    with_dropout, without = lora_llama(dropout=0.3), lora_llama()
    fused_lora.fuse(with_dropout)
    with torch.no_grad():
        with_dropout.eval()
        evaluated = with_dropout(**batch).logits
        assert len(fused_calls) == 14
        assert torch.allclose(evaluated, without(**batch).logits, atol=1e-5)


def test_a_merged_adapter_and_autocast_take_peft_path(fused_calls: list[int]) -> None:
    batch = flattened_batch((9, 11))
    model = lora_llama()
    fused_lora.fuse(model)
    with torch.no_grad():
        unmerged = model(**batch).logits
        assert len(fused_calls) == 14
        model.merge_adapter()
        merged = model(**batch).logits
        assert len(fused_calls) == 14  # merged into the base weights: peft's path
        assert torch.allclose(merged, unmerged, atol=1e-4)
        model.unmerge_adapter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**batch)
        assert len(fused_calls) == 14  # mixed precision keeps peft's casting


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fixed_seed_loss_curve_matches_peft(
    dropout: float, tiny_llama_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fused_calls: list[int]
) -> None:
    fused, _ = loss_curve(tiny_llama_folder, "lora", True, tmp_path / "fused", dropout)
    assert fused_calls  # the run took the fused path
    monkeypatch.setattr(fused_lora, "fuse", lambda model: 0)  # peft's own forward
    calls_before = len(fused_calls)
    stock, _ = loss_curve(tiny_llama_folder, "lora", True, tmp_path / "stock", dropout)
    assert len(fused_calls) == calls_before
    assert len(fused) == len(stock) == STEPS
    assert_same_curve(stock, fused)


def test_generation_with_a_cache_matches_peft(fused_calls: list[int]) -> None:
    """Evaluation's generation metrics run the fused layers too: one token at a time with a KV cache."""
    prompt = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(3))
    model = lora_llama()
    model.config.use_cache = True
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        stock = model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)
        fused_lora.fuse(model)
        fused = model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)
    assert len(fused_calls) == 14 * 8  # every layer, every new token
    assert torch.equal(fused, stock)
