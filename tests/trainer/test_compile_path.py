"""Compiled decoder layers (`training.compiling`) train as the eager model does, and a compile error falls back.

What must not change: the loss curve of a fixed-seed run. Inductor fuses the layers' elementwise work and
may reorder float32 sums, so values agree to rounding, not bit for bit. Stated tolerance: every logged
training loss of an 8-step fixed-seed run (tiny Llama, LoRA, gradient accumulation 2, learning rate 0.01,
the run's own Trainer class with the label-position loss) within 1e-4 relative of the eager run's, and no
recompile after the first step although every flattened batch has its own token count (`dynamic=True`).
Both runs go through `train.compile_for_training` (FTO_TORCH_COMPILE off, then on), so the probe step it
takes before training must leave no trace on the curve. The fallback: with a backend that raises, the run
logs the error by name, trains on the eager layers, and its curve is the eager run's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_trainer.training import compiling, loss
from finetune_trainer.training.modeling import Hardware, apply_method, load_model, load_tokenizer
from finetune_trainer.training.train import collator_for, compile_for_training, trainer_class, training_arguments

from tests.trainer.builders import arithmetic_records
from tests.trainer.test_loss_path import STEPS, assert_same_curve, config_for

RELATIVE = 1e-4


def loss_curve(
    folder: Path, mode: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[float], list[int], list[bool], str]:
    """An 8-step run through `train.compile_for_training` with FTO_TORCH_COMPILE off (`eager`) or on
    (`compiled`; `failing`: with a backend that raises). Per step: dynamo's graph count and whether the layers
    were compiled; and the compile log line."""
    from finetune_trainer.data.tokenization import tokenize_split
    from torch._dynamo.utils import counters
    from transformers import TrainerCallback, set_seed

    monkeypatch.setenv(compiling.SETTING, "off" if mode == "eager" else "on")
    if mode == "failing":
        original = compiling.compile_layers

        def failing(graph: Any, example_inputs: Any) -> Any:
            raise RuntimeError("forced compile failure")

        monkeypatch.setattr(compiling, "compile_layers", lambda model, dynamic=True: original(model, dynamic, failing))
    cfg = config_for(folder, "lora")
    tokenizer = load_tokenizer(folder, "t")
    dataset = tokenize_split(arithmetic_records(64), tokenizer, "prompt-completion", 64, None, "t")
    set_seed(3)
    model = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    graphs: list[int] = []
    compiled: list[bool] = []

    class Watch(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            graphs.append(int(counters["stats"]["unique_graphs"]))
            compiled.append(compiling.is_compiled(model))

    hardware = Hardware(cuda=False, bf16=False, bitsandbytes=False)
    args = training_arguments(cfg, "fp32", hardware, scratch, STEPS)
    args.save_strategy = "no"
    args.logging_steps = 1
    collator = collator_for(cfg, tokenizer)
    trainer = trainer_class(cfg)(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[Watch()]
    )
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    package = logging.getLogger("finetune_trainer")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        assert compile_for_training(trainer, cfg, hardware, dataset, collator) == (mode == "compiled")
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
    trainer.train()
    curve = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    return curve, graphs, compiled, " | ".join(logged)


def test_fixed_seed_loss_curve_matches_with_compiled_layers(
    tiny_llama_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, _, eager_compiled, eager_log = loss_curve(tiny_llama_folder, "eager", tmp_path / "eager", monkeypatch)
    compiled, graphs, was_compiled, log = loss_curve(tiny_llama_folder, "compiled", tmp_path / "on", monkeypatch)
    assert "torch.compile of the decoder layers: off (FTO_TORCH_COMPILE=off)" in eager_log
    assert "torch.compile of the decoder layers: on (FTO_TORCH_COMPILE=on)" in log and "probe step" in log
    assert not any(eager_compiled) and all(was_compiled)
    assert len(eager) == len(compiled) == STEPS
    assert_same_curve(eager, compiled, RELATIVE)
    assert graphs[0] > 0, "nothing was compiled"
    assert graphs[-1] == graphs[0], f"recompiled after the probe: graphs per step {graphs}"


def test_a_compile_error_falls_back_to_eager_and_names_the_error(
    tiny_llama_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, _, _, _ = loss_curve(tiny_llama_folder, "eager", tmp_path / "eager", monkeypatch)
    fallback, _, compiled, log = loss_curve(tiny_llama_folder, "failing", tmp_path / "failing", monkeypatch)
    assert "torch.compile failed, training on the eager model instead" in log and "forced compile failure" in log
    assert not any(compiled)
    assert fallback == pytest.approx(eager, rel=1e-6)  # the probe left no trace: the eager run, step for step


def test_the_probe_names_the_error_and_leaves_no_gradients(tiny_llama_folder: Path) -> None:
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
