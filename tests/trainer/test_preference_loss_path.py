"""Preference log-probabilities at label positions (`preference.label_position_logps`) train as the logits path did.

What must not change: every sequence's summed log-probability, its gradients, and so the DPO (SimPO) loss
curve of a fixed-seed run. The new path sums the same fp32 log-softmax values in another order (answer
positions only, chunk by chunk), so they agree to float32 rounding. Stated tolerance: every logged training
loss of an 8-step fixed-seed run (tiny Llama, LoRA, gradient accumulation 2, learning rate 0.01) within
1e-4 relative of the logits path's; single-batch log-probabilities within 1e-4 absolute and gradients within
1e-5. Each test checks that the new path really ran (the head projected one position per forward).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_trainer.config import parse_config
from finetune_trainer.training import loss, preference, sharding
from finetune_trainer.training.modeling import Hardware, apply_method, load_model, load_tokenizer
from finetune_trainer.training.train import training_arguments

from tests.trainer.test_loss_path import HeadPositions, assert_same_curve

RELATIVE = 1e-4
STEPS = 8


@pytest.mark.parametrize("rows", [1, 7, 1000])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_token_logps_match_log_softmax(rows: int, weight_grad: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(300, 16, generator=generator, requires_grad=weight_grad)
    targets = torch.randint(0, 300, (50,), generator=generator)
    scale = torch.randn(50, generator=generator)  # a preference loss weighs each token by its sequence's
    mine = loss.token_logps(hidden, weight, targets, rows=rows)
    theirs = torch.log_softmax(hidden @ weight.t(), dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    assert torch.allclose(mine, theirs, atol=1e-5)
    wanted = (hidden, weight) if weight_grad else (hidden,)
    for a, b in zip(
        torch.autograd.grad((mine * scale).sum(), wanted),
        torch.autograd.grad((theirs * scale).sum(), wanted),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def config_for(objective: str) -> Any:
    settings = {"simpo": {"beta": 2.0, "gamma": 0.5}} if objective == "simpo" else {"dpo": {"beta": 0.1}}
    return parse_config({
        "job": {"namespace": "t", "name": "t", "run": 1},
        "baseModel": {"uri": "s3://t/model/"},
        "dataset": {"train": {"uri": "s3://t/train.jsonl"}, "schema": "preference", "maxSeqLength": 64},
        "method": {"type": "lora", "objective": objective, **settings, "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": STEPS, "batchSize": 2, "gradientAccumulationSteps": 2,
                            "learningRate": 0.01, "warmupRatio": 0.0, "lrScheduler": "constant", "seed": 3},
        "checkpointing": {"intervalSteps": 100},
        "output": {"uri": "s3://t/out/", "runUri": "s3://t/out/run-1/"},
    })  # fmt: skip


def pairs(count: int) -> list[dict[str, Any]]:
    """Pairs with a learnable rule: the chosen answer repeats the prompt's number word, the rejected one does not."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return [
        {"prompt": f"say {names[i % 10]} please", "chosen": f"{names[i % 10]} {names[i % 10]}",
         "rejected": f"{names[(i + 3) % 10]} maybe"}
        for i in range(count)
    ]  # fmt: skip


def tokenized(folder: Path, cfg: Any) -> Any:
    from finetune_trainer.data.chat_template import ensure_chat_template
    from finetune_trainer.data.formats import FORMATS, normalize
    from finetune_trainer.data.readers import Record
    from finetune_trainer.data.tokenization import tokenize_split

    tokenizer = load_tokenizer(folder, "t")
    ensure_chat_template(tokenizer)
    examples = normalize([Record(r, f"line {i + 1}") for i, r in enumerate(pairs(40))], FORMATS["preference"], {})
    return tokenize_split(examples, tokenizer, "preference", 64, None, "t")


def loss_curve(folder: Path, objective: str, new_path: bool, scratch: Path) -> tuple[list[float], list[int]]:
    from transformers import set_seed

    cfg = config_for(objective)
    dataset = tokenized(folder, cfg)
    set_seed(3)
    model = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    heads = HeadPositions(model)
    args = training_arguments(cfg, "fp32", Hardware(cuda=False, bf16=False, bitsandbytes=False), scratch, STEPS)
    args.save_strategy = "no"
    args.logging_steps = 1
    kind = preference.trainer_class(sharding.trainer_class(cfg), cfg.method.preference_settings, new_path)
    trainer = kind(model=model, args=args, train_dataset=dataset, data_collator=preference.PairCollator())
    trainer.train()
    curve = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    return curve, heads.seen


@pytest.mark.parametrize("objective", ["dpo", "simpo"])
def test_fixed_seed_preference_loss_curve_matches_the_logits_path(
    objective: str, tiny_llama_folder: Path, tmp_path: Path
) -> None:
    old, old_heads = loss_curve(tiny_llama_folder, objective, False, tmp_path / "old")
    new, new_heads = loss_curve(tiny_llama_folder, objective, True, tmp_path / "new")
    assert len(old) == len(new) == STEPS
    assert set(new_heads) == {1} and min(old_heads) > 1  # the new path ran; the old one projected every token
    assert_same_curve(old, new, RELATIVE)


def test_sequence_logps_and_gradients_match_the_logits_path(tiny_llama_folder: Path) -> None:
    cfg = config_for("dpo")
    dataset = tokenized(tiny_llama_folder, cfg)
    model = apply_method(load_model(cfg, tiny_llama_folder, None, "fp32"), cfg)
    batch = preference.PairCollator()([dataset[i] for i in range(3)])
    results = []
    for new in (False, True):
        sums, counts = preference.batch_logps(model, batch, label_positions=new)
        (sums * torch.arange(1, 7)).sum().backward()  # each sequence weighed differently, as DPO does
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        results.append((sums.detach(), counts, grads))
    (old_sums, old_counts, old_grads), (new_sums, new_counts, new_grads) = results
    assert torch.equal(old_counts, new_counts) and old_counts.min() > 0
    assert torch.allclose(old_sums, new_sums, atol=1e-4), (old_sums, new_sums)
    for name, grad in old_grads.items():
        assert torch.allclose(grad, new_grads[name], atol=1e-5), name
