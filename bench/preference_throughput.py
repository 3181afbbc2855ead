"""Preference-tuning throughput: our DPO trainer against TRL's DPOTrainer, in interleaved repeated rounds.

The sibling of `trainer_throughput.py` (issue #26), with its method and its helpers (`StepClock`, `summarize`,
`markdown`): every arm runs several times, interleaved (A B C, A B C, ...), each run in its own fresh process,
and the report is per arm the median and range of real (non-padding) tokens/s and of peak RSS, and for ours
against each other arm the median of the per-round ratios with their min..max; the load average is printed
before and after. Tokens are those of both sequences of every pair (prompt and answer, chosen and rejected),
as each trainer counts them (`include_num_input_tokens_seen="non_padding"`).

Arms (choose with `--modes`):
- `ours`: `method.objective: dpo` through this trainer's own path (`training/preference.py`): a batch of B pairs
  is one padding-free row of 2B sequences, the reference is the same LoRA model with its adapter disabled.
- `ours-simpo`: `method.objective: simpo` on the same path: no reference pass (for information).
- `trl`: TRL's DPOTrainer configured fairly: the same LoRA model (rank 8, the reference by disabling the
  adapter, as ours), fp32, no gradient checkpointing, the same beta, loss, learning rate, batch (pairs), steps,
  records, chat template and no truncation; `padding_free=True` is asked for and what TRL actually used is
  recorded (this TRL version turns it off with a warning and pads each batch to its longest sequence).
- `trl-default`: DPOConfig's defaults for everything but the run's size (steps, batch, learning rate, seed):
  what a user gets (bf16 autocast, gradient checkpointing, padding).

Same model (SmolLM2-135M-Instruct, or with `--base tiny` a 4-layer random Llama), the same pairs (prompts and
answers of long-tailed lengths, rendered with the model's chat template by both), the same order.

    python bench/preference_throughput.py                          # ours, trl, trl-default; 3 rounds
    python bench/preference_throughput.py --modes ours,trl,ours-simpo --rounds 5 --steps 10
    python bench/preference_throughput.py --quick                  # smoke run: tiny model, 2 rounds, 3 steps

The last line of output is one JSON object; a markdown table goes to stderr before it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_throughput import BASES, REPO, StepClock, arm_order, build_model, markdown, run_rounds, summarize

sys.path.insert(0, str(REPO / "trainer-image"))

MODES = {
    "ours": "this trainer, objective dpo: one padding-free row of 2B sequences, reference = adapter disabled",
    "ours-simpo": "this trainer, objective simpo: the same row, no reference pass",
    "trl": "TRL DPOTrainer, fair: fp32, no gradient checkpointing, padding_free asked (see config), same LoRA",
    "trl-default": "TRL DPOTrainer with DPOConfig's defaults (bf16 autocast, gradient checkpointing, padding)",
}
BETA = 0.1
LEARNING_RATE = 1e-4


def pair_records(count: int, seed: int) -> list[dict[str, Any]]:
    """TRL conversational pairs whose prompt and answer lengths follow a long tail (mostly short)."""
    from finetune_trainer.devtools.tiny import WORDS

    rng = random.Random(seed)

    def words(short: tuple[int, int], long: tuple[int, int]) -> str:
        low, high = short if rng.random() < 0.8 else long
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    return [
        {
            "prompt": [{"role": "user", "content": words((4, 20), (20, 60))}],
            "chosen": [{"role": "assistant", "content": words((4, 30), (30, 90))}],
            "rejected": [{"role": "assistant", "content": words((4, 30), (30, 90))}],
        }
        for _ in range(count)
    ]


def run_one(mode: str, folder: Path, steps: int, batch: int, max_length: int, warmup: int) -> dict[str, Any]:
    """One measurement of arm `mode` in this process."""
    import torch
    from finetune_trainer.config import parse_config
    from finetune_trainer.data.chat_template import ensure_chat_template
    from finetune_trainer.data.formats import FORMATS, normalize
    from finetune_trainer.data.readers import Record
    from finetune_trainer.data.tokenization import tokenize_split
    from finetune_trainer.training.modeling import Hardware, apply_method, load_model, load_tokenizer
    from finetune_trainer.training.train import collator_for, trainer_class, training_arguments

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    objective = "simpo" if mode == "ours-simpo" else "dpo"
    settings = {"simpo": {"beta": 2.0, "gamma": 0.5}} if objective == "simpo" else {"dpo": {"beta": BETA}}
    config = parse_config({
        "job": {"namespace": "bench", "name": "bench", "run": 1},
        "baseModel": {"uri": "s3://bench/model/"},
        "dataset": {"train": {"uri": "s3://bench/train.jsonl"}, "schema": "preference", "maxSeqLength": max_length},
        "method": {"type": "lora", "objective": objective, **settings,
                   "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": steps, "batchSize": batch, "learningRate": LEARNING_RATE,
                            "warmupRatio": 0.0, "lrScheduler": "constant", "seed": 1},
        "checkpointing": {"intervalSteps": 10 * steps},
        "output": {"uri": "s3://bench/out/", "runUri": "s3://bench/out/run-1/"},
    })  # fmt: skip
    tokenizer = load_tokenizer(folder, "bench")
    ensure_chat_template(tokenizer)  # the tiny model has none; every arm renders with the same one
    records = pair_records(steps * batch, seed=0)
    # the fused LoRA product is this trainer's; TRL's arms get peft's own layers
    model = apply_method(load_model(config, folder, None, "fp32"), config, fused=not mode.startswith("trl"))
    with tempfile.TemporaryDirectory() as scratch:
        if mode.startswith("trl"):
            return trl_run(mode, model, tokenizer, records, steps, batch, max_length, warmup, Path(scratch))
        examples = normalize(
            [Record(r, f"bench line {i + 1}") for i, r in enumerate(records)], FORMATS["preference"], {}
        )
        dataset = tokenize_split(examples, tokenizer, "preference", max_length, None, "bench")
        args = training_arguments(
            config, "fp32", Hardware(cuda=False, bf16=False, bitsandbytes=False), Path(scratch), steps
        )
        args.train_sampling_strategy = "sequential"  # every arm sees the same pairs in the same order
        args.include_num_input_tokens_seen = "non_padding"
        clock = StepClock()
        trainer = trainer_class(config)(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator_for(config, tokenizer),
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
    }


def trl_run(
    mode: str,
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    steps: int,
    batch: int,
    max_length: int,
    warmup: int,
    scratch: Path,
) -> dict[str, Any]:
    """TRL's DPOTrainer on the same LoRA model (no ref_model: TRL disables the adapter, as ours), pairs, batch
    and steps; `trl` configured as ours runs, `trl-default` with DPOConfig's defaults."""
    import datasets
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]  # lazily exported names

    common: dict[str, Any] = {
        "output_dir": str(scratch),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "constant",
        "beta": BETA,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": steps,
        "use_cpu": True,
        "seed": 1,
        "dataloader_num_workers": 0,
        "train_sampling_strategy": "sequential",
        "include_num_input_tokens_seen": "non_padding",
    }
    if mode == "trl":
        common.update(
            bf16=False,
            gradient_checkpointing=False,
            padding_free=True,
            max_length=max_length,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=False,
        )
    clock = StepClock()
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(**common),
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=tokenizer,
        callbacks=[clock.callback()],
    )
    trainer.train()
    tokens_per_second, tokens, seconds = clock.rate(warmup)
    used = {k: getattr(trainer.args, k, None) for k in ("bf16", "gradient_checkpointing", "padding_free", "max_length")}
    used["padding_free_in_effect"] = bool(getattr(trainer, "padding_free", False))
    return {
        "tokens_per_second": round(tokens_per_second, 1),
        "real_tokens": tokens,
        "seconds": round(seconds, 3),
        "timed_steps": steps - warmup,
        "peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "config": used,
    }


def child_command(mode: str, folder: Path, steps: int, batch: int, max_length: int, warmup: int) -> list[str]:
    return [
        sys.executable, __file__, "--child", mode, "--model", str(folder), "--steps", str(steps), "--batch",
        str(batch), "--max-length", str(max_length), "--warmup", str(warmup),
    ]  # fmt: skip


def bench(
    steps: int, batch: int, max_length: int, warmup: int, base: str, modes: tuple[str, ...], rounds: int
) -> dict[str, Any]:
    """`rounds` rounds, each running every arm once (the order rotated per round), each run in its own process."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        folder = build_model(Path(scratch) / "model", base)
        runs = run_rounds(modes, rounds, lambda mode: child_command(mode, folder, steps, batch, max_length, warmup))
    summary = summarize(runs, modes)
    print(markdown(summary), file=sys.stderr)
    for warning in summary["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    return {
        "mode": "cpu-dpo",
        "model": BASES[base],
        "batch_pairs": batch,
        "max_length": max_length,
        "beta": BETA,
        "steps": steps,
        "warmup_steps": warmup,
        "rounds": rounds,
        "order": [arm_order(modes, number) for number in range(1, rounds + 1)],
        "threads": os.cpu_count(),
        "arm_descriptions": {mode: MODES[mode] for mode in modes},
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.time() - started, 1),
        **summary,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (%(default)s)")
    parser.add_argument("--max-length", type=int, default=256, help="per sequence; the pairs fit it uncut")
    parser.add_argument("--base", choices=sorted(BASES), default="smollm2", help="the model (%(default)s)")
    parser.add_argument("--modes", default="ours,trl,trl-default", help="arms in round order (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every arm (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 rounds, 3 steps")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        result = run_one(args.child, args.model, args.steps, args.batch, args.max_length, args.warmup)
    else:
        modes = tuple(m for m in args.modes.split(",") if m)
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            parser.error(f"--modes: unknown {', '.join(unknown)} (known: {', '.join(MODES)})")
        if "ours" not in modes:
            parser.error("--modes: must include ours (every ratio is ours against another arm)")
        base, rounds, steps, warmup = args.base, args.rounds, args.steps, args.warmup
        if args.quick:
            base, rounds, steps, warmup = "tiny", min(rounds, 2), 3, 1
        if warmup >= steps or rounds < 1:
            parser.error("--warmup must be below --steps, and --rounds at least 1")
        result = bench(steps, args.batch, args.max_length, warmup, base, modes, rounds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
