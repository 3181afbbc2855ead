"""The label-position loss (`training.loss`) trains exactly as the Trainer's stock loss did.

What must not change: the loss value, the gradients and so the loss curve of a fixed-seed run. The new path
sums the same fp32 cross-entropy in a different order (chunk by chunk, only labelled positions), so values
agree to float32 rounding, not bit for bit. Stated tolerance: every logged training loss of an 8-step
fixed-seed run (tiny Llama, LoRA and full fine-tuning, gradient accumulation 2, learning rate 0.01) within
1e-4 relative of the stock path's, and single-batch gradients within 1e-5 absolute.
Each test also checks the new path really ran (the head projected one position in the model's forward,
`logits_to_keep=1`), so it cannot pass by falling back to the stock loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_trainer.config import parse_config
from finetune_trainer.training import loss, sharding
from finetune_trainer.training.modeling import Hardware, apply_method, load_model, load_tokenizer
from finetune_trainer.training.train import collator_for, trainer_class, training_arguments

from tests.trainer.builders import arithmetic_records

RELATIVE = 1e-4
STEPS = 8


@pytest.mark.parametrize("rows", [1, 7, 50, 1000])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_fused_linear_cross_entropy_matches_cross_entropy(rows: int, weight_grad: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator, requires_grad=weight_grad)
    targets = torch.randint(0, 300, (50,), generator=generator)
    fused = loss.fused_linear_cross_entropy(hidden, weight, targets, rows=rows)
    stock = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    wanted = (hidden, weight) if weight_grad else (hidden,)
    fused_grads = torch.autograd.grad(fused * 0.5, wanted)
    stock_grads = torch.autograd.grad(stock * 0.5, wanted)
    assert fused.item() == pytest.approx(stock.item(), rel=1e-6)
    for mine, theirs in zip(fused_grads, stock_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5), (mine - theirs).abs().max()


@pytest.mark.parametrize(("elements", "columns"), [(300, None), (3000, 37), (50 * 300, 128), (10, 300)])
def test_frozen_head_cross_entropy_matches_cross_entropy(elements: int, columns: int | None) -> None:
    """Row blocks and vocabulary slices (uneven, several, one row at a time) give the loss and the gradient of
    the whole logits at once; the online softmax rescales correctly when a later slice holds the maximum."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator)
    weight[290:] *= 4  # the largest logits in the last slice
    targets = torch.randint(0, 300, (50,), generator=generator)
    total, grad = loss.frozen_head_cross_entropy(hidden.detach(), weight, targets, elements, columns)
    stock = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (stock_grad,) = torch.autograd.grad(stock, hidden)
    assert total.item() == pytest.approx(stock.item(), rel=1e-6)
    assert torch.allclose(grad, stock_grad, atol=1e-5), (grad - stock_grad).abs().max()


def test_label_positions_shift_like_the_stock_loss() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100, 7, 8]])
    mask, targets = loss.label_positions(labels)
    assert mask.tolist() == [[False, True, True, False, True, True, False]]
    assert targets.tolist() == [5, 6, 7, 8]


def config_for(folder: Path, method: str, dropout: float = 0.0) -> Any:
    lora = {"lora": {"rank": 4, "alpha": 8, "dropout": dropout}}
    section = {"type": method, **(lora if method == "lora" else {})}
    return parse_config({
        "job": {"namespace": "t", "name": "t", "run": 1},
        "baseModel": {"uri": "s3://t/model/"},
        "dataset": {"train": {"uri": "s3://t/train.jsonl"}, "schema": "prompt-completion", "maxSeqLength": 64},
        "method": section,
        "hyperparameters": {"maxSteps": STEPS, "batchSize": 4, "gradientAccumulationSteps": 2,
                            "learningRate": 0.01, "warmupRatio": 0.0, "lrScheduler": "constant", "seed": 3},
        "checkpointing": {"intervalSteps": 100},
        "output": {"uri": "s3://t/out/", "runUri": "s3://t/out/run-1/"},
    })  # fmt: skip


class HeadPositions:
    """Counts the positions the output head projects in each forward (the new path: 1)."""

    def __init__(self, model: Any) -> None:
        self.seen: list[int] = []
        head = loss._unwrap(model).get_output_embeddings()
        head.register_forward_hook(lambda _m, args, _o: self.seen.append(int(args[0].shape[-2])))


def loss_curve(
    folder: Path, method: str, new_path: bool, scratch: Path, dropout: float = 0.0
) -> tuple[list[float], list[int]]:
    from finetune_trainer.data.tokenization import tokenize_split
    from transformers import set_seed

    cfg = config_for(folder, method, dropout)
    tokenizer = load_tokenizer(folder, "t")
    dataset = tokenize_split(arithmetic_records(64), tokenizer, "prompt-completion", 64, None, "t")
    set_seed(3)
    model = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    heads = HeadPositions(model)
    args = training_arguments(cfg, "fp32", Hardware(cuda=False, bf16=False, bitsandbytes=False), scratch, STEPS)
    args.save_strategy = "no"
    args.logging_steps = 1
    kind = trainer_class(cfg) if new_path else sharding.trainer_class(cfg)
    trainer = kind(model=model, args=args, train_dataset=dataset, data_collator=collator_for(cfg, tokenizer))
    trainer.train()
    curve = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    return curve, heads.seen


def assert_same_curve(reference: list[float], new: list[float], relative: float = RELATIVE) -> None:
    """Every logged loss of `new` within `relative` of `reference`'s at the same step, and the run trained."""
    for step, (theirs, mine) in enumerate(zip(reference, new, strict=True), start=1):
        assert mine == pytest.approx(theirs, rel=relative), f"step {step}: {mine} vs {theirs}"
    assert new[-1] < new[0]  # it trained


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fixed_seed_loss_curve_matches_the_stock_loss(method: str, tiny_llama_folder: Path, tmp_path: Path) -> None:
    stock, stock_heads = loss_curve(tiny_llama_folder, method, False, tmp_path / "stock")
    new, new_heads = loss_curve(tiny_llama_folder, method, True, tmp_path / "new")
    assert len(stock) == len(new) == STEPS
    assert set(new_heads) == {1} and min(stock_heads) > 1  # the new path ran; the stock one projected every token
    assert_same_curve(stock, new)


@pytest.mark.parametrize("tied", [True, False])
def test_loss_and_gradients_match_the_models_own(tied: bool) -> None:
    from transformers import DataCollatorWithFlattening, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                         use_cache=False)  # as load_model: a cache turns off the packed-sequence mask  # fmt: skip
    model = LlamaForCausalLM(config)
    assert loss.applies(model)
    records = []
    for length in (7, 20, 13):
        ids = torch.randint(3, 500, (length,)).tolist()
        records.append({"input_ids": ids, "labels": [-100] * (length // 3) + ids[length // 3 :]})
    batch = DataCollatorWithFlattening(return_position_ids=True)(records)  # type: ignore[no-untyped-call]
    stock = model(**batch).loss
    stock.backward()
    stock_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    mine = loss.causal_lm_loss(model, dict(batch))
    mine.backward()
    assert mine.item() == pytest.approx(stock.item(), rel=1e-6)
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, stock_grads[name], atol=1e-5), name
