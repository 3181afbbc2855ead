"""Compiled decoder layers (`training.compiling`) train as the eager model does, and a compile error falls back.

What must not change: the loss curve of a fixed-seed run. Inductor fuses the layers' elementwise work and
may reorder float32 sums, so values agree to rounding, not bit for bit. Stated tolerance: every logged
training loss of an 8-step fixed-seed run (tiny Llama, LoRA, gradient accumulation 2, learning rate 0.01,
the run's own Trainer class with the label-position loss) within 1e-4 relative of the eager run's, and no
recompile after the first step although every flattened batch has its own token count (`dynamic=True`).
The fallback: a backend that raises makes `probe` name the error and put the layers back to eager, after
which the same step runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_trainer.training import compiling, loss
from finetune_trainer.training.modeling import Hardware, apply_method, load_model, load_tokenizer
from finetune_trainer.training.train import collator_for, trainer_class, training_arguments

from tests.trainer.builders import arithmetic_records
from tests.trainer.test_loss_path import STEPS, config_for

RELATIVE = 1e-4


def loss_curve(folder: Path, compiled: bool, scratch: Path) -> tuple[list[float], list[int]]:
    from finetune_trainer.data.tokenization import tokenize_split
    from torch._dynamo.utils import counters
    from transformers import set_seed

    cfg = config_for(folder, "lora")
    tokenizer = load_tokenizer(folder, "t")
    dataset = tokenize_split(arithmetic_records(64), tokenizer, "prompt-completion", 64, None, "t")
    set_seed(3)
    model = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    if compiled:
        assert compiling.compile_layers(model) == 2
    graphs: list[int] = []

    from transformers import TrainerCallback

    class Graphs(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            graphs.append(int(counters["stats"]["unique_graphs"]))

    args = training_arguments(cfg, "fp32", Hardware(cuda=False, bf16=False, bitsandbytes=False), scratch, STEPS)
    args.save_strategy = "no"
    args.logging_steps = 1
    trainer = trainer_class(cfg)(
        model=model, args=args, train_dataset=dataset, data_collator=collator_for(cfg, tokenizer), callbacks=[Graphs()]
    )
    trainer.train()
    assert compiling.is_compiled(model) == compiled
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry], graphs


def test_fixed_seed_loss_curve_matches_with_compiled_layers(tiny_llama_folder: Path, tmp_path: Path) -> None:
    eager, _ = loss_curve(tiny_llama_folder, False, tmp_path / "eager")
    compiled, graphs = loss_curve(tiny_llama_folder, True, tmp_path / "compiled")
    assert len(eager) == len(compiled) == STEPS
    for step, (theirs, mine) in enumerate(zip(eager, compiled, strict=True), start=1):
        assert mine == pytest.approx(theirs, rel=RELATIVE), f"step {step}: {mine} vs {theirs}"
    assert graphs[0] > 0, "nothing was compiled"
    assert graphs[-1] == graphs[0], f"recompiled after the first step: graphs per step {graphs}"


def test_a_compile_error_falls_back_to_eager_and_names_the_error(tiny_llama_folder: Path) -> None:
    from transformers import DataCollatorWithFlattening

    cfg = config_for(tiny_llama_folder, "lora")
    model = apply_method(load_model(cfg, tiny_llama_folder, None, "fp32"), cfg)

    def failing(graph: Any, example_inputs: Any) -> Any:
        raise RuntimeError("forced compile failure")

    compiling.compile_layers(model, backend=failing)
    assert compiling.is_compiled(model)
    ids = list(range(3, 20))
    batch = dict(DataCollatorWithFlattening(return_position_ids=True)([{"input_ids": ids, "labels": ids}]))  # type: ignore[no-untyped-call]
    error = compiling.probe(model, lambda: loss.causal_lm_loss(model, batch).backward())
    assert error is not None and "forced compile failure" in error, error
    assert not compiling.is_compiled(model)
    assert all(p.grad is None for p in model.parameters())  # the probe is not a training step
    value = loss.causal_lm_loss(model, batch)  # the eager model trains
    value.backward()
    assert torch.isfinite(value) and any(p.grad is not None for p in model.parameters())
