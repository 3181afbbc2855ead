"""Two ways of taking the same training step, alternated step by step in ONE process: time, memory, profile.

Why in one process: on a shared machine the load moves far more than any difference between two paths
(docs/benchmarks.md: the same arm's tokens/s moved 15x between runs). Here both paths train the same model
on the same batches, A B A B ..., so the load falls on both alike; per path the report gives the median and
range of the step time, the median of the per-pair ratios, the peak resident memory each step added, and
the top operators of a profiled step (torch.profiler, self CPU time). Comparisons (`--compare`):

- `loss` (issue #30): the Trainer's stock loss (full logits) against the label-position loss (`training.loss`).
- `compile`: the eager model against its decoder layers compiled (`training.compiling`, inductor,
  `dynamic=True`; both with the label-position loss). The compile is paid in the warm-up steps, which are
  reported apart (`--warmup`, default 2 for this one); recompiles during the timed steps are counted from
  torch._dynamo's counters (each flattened batch has its own token count).
- `lora`: peft's own `lora.Linear` forward against the base and adapter product in one pass
  (`training.fused_lora`; both with the label-position loss).
- `preference`: a DPO step (LoRA; the reference pass with the adapter disabled, then the policy), its
  log-probabilities from the full logits (`preference.sequence_logps`) against label positions only
  (`preference.label_position_logps`).

Model: SmolLM2-135M-Instruct, LoRA r=8, fp32 (the benchmark's model, converted once and cached), or with
`--base tiny` a 4-layer random Llama (a smoke run in seconds). Records: the benchmark's (long-tailed lengths),
batch 8 (`--batch`), max length 512; pairs for `preference` as `bench/preference_throughput.py`'s.

Peak memory per step: glibc's mmap threshold is pinned (the script re-executes itself with
`MALLOC_MMAP_THRESHOLD_=65536`), so freed tensors go back to the kernel; before each step the kernel's
high-water mark is reset (`/proc/self/clear_refs`), and the step's peak is `VmHWM` minus the RSS before it.

    python bench/profile_step.py [--compare loss|compile|lora|preference] [--steps 4] [--base smollm2|tiny]

The last line of output is one JSON object; the profiler's tables go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer-image"))
sys.path.insert(0, str(REPO / "bench"))

ARMS = {
    "loss": ("stock loss", "label-position loss"),
    "compile": ("eager", "compiled"),
    "preference": ("logits", "label-position log-probs"),
    "lora": ("peft's LoRA layers", "fused LoRA layers"),
}
MMAP_THRESHOLD = "65536"


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def lora_config(schema: str, batch: int, extra: dict[str, Any] | None = None) -> Any:
    from finetune_trainer.config import parse_config

    return parse_config({
        "job": {"namespace": "p", "name": "p", "run": 1},
        "baseModel": {"uri": "s3://p/model/"},
        "dataset": {"train": {"uri": "s3://p/t.jsonl"}, "schema": schema, "maxSeqLength": 512},
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}, **(extra or {})},
        "hyperparameters": {"maxSteps": 1, "batchSize": batch},
        "checkpointing": {"intervalSteps": 10},
        "output": {"uri": "s3://p/out/", "runUri": "s3://p/out/run-1/"},
    })  # fmt: skip


def sft_batches(folder: Path, count: int, batch: int) -> tuple[Any, list[dict[str, Any]]]:
    """The LoRA model and `count` flattened micro-batches of the benchmark's prompt-completion records."""
    from finetune_trainer.data.tokenization import tokenize_split
    from finetune_trainer.training.modeling import apply_method, load_model, load_tokenizer
    from trainer_throughput import variable_records
    from transformers import DataCollatorWithFlattening

    cfg = lora_config("prompt-completion", batch)
    tokenizer = load_tokenizer(folder, "p")
    data = tokenize_split(variable_records(count * batch, seed=0), tokenizer, "prompt-completion", 512, None, "p")
    model = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    collate = DataCollatorWithFlattening(return_position_ids=True)  # type: ignore[no-untyped-call]
    rows = [{"input_ids": data[i]["input_ids"], "labels": data[i]["labels"]} for i in range(len(data))]
    return model, [dict(collate(rows[s : s + batch])) for s in range(0, len(rows), batch)]


def pair_batches(folder: Path, count: int, batch: int) -> tuple[Any, list[dict[str, Any]], Any]:
    """The LoRA model, `count` batches of `batch` pairs (`PairCollator`), and the DPO spec."""
    from finetune_trainer.data.chat_template import ensure_chat_template
    from finetune_trainer.data.formats import FORMATS, normalize
    from finetune_trainer.data.readers import Record
    from finetune_trainer.data.tokenization import tokenize_split
    from finetune_trainer.training.modeling import apply_method, load_model, load_tokenizer
    from finetune_trainer.training.preference import PairCollator
    from preference_throughput import BETA, pair_records

    cfg = lora_config("preference", batch, {"objective": "dpo", "dpo": {"beta": BETA}})
    tokenizer = load_tokenizer(folder, "p")
    ensure_chat_template(tokenizer)
    records = pair_records(count * batch, seed=0)
    examples = normalize([Record(r, f"line {i + 1}") for i, r in enumerate(records)], FORMATS["preference"], {})
    data = tokenize_split(examples, tokenizer, "preference", 512, None, "p")
    model = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    rows = [data[i] for i in range(len(data))]
    collate = PairCollator()
    return model, [collate(rows[s : s + batch]) for s in range(0, len(rows), batch)], cfg.method.preference_settings


def arms_for(compare: str, folder: Path, count: int, batch: int) -> tuple[Any, list[dict[str, Any]], Any]:
    """(model, batches, step(inputs, second_arm)): a forward and backward of one arm, without the optimizer."""
    from finetune_trainer.training import compiling, fused_lora, loss, preference

    if compare == "preference":
        model, batches, spec = pair_batches(folder, count, batch)

        def pair_step(inputs: dict[str, Any], new: bool) -> Any:
            scores = preference.score_batch(model, inputs, spec, label_positions=new)
            value = scores.losses.mean()
            value.backward()
            return value

        return model, batches, pair_step
    model, batches = sft_batches(folder, count, batch)
    if compare == "loss":

        def loss_step(inputs: dict[str, Any], new: bool) -> Any:
            value = loss.causal_lm_loss(model, inputs) if new else model(**inputs).loss
            value.backward()
            return value

        return model, batches, loss_step
    if compare == "lora":
        fused_layers = [module for module in model.modules() if fused_lora.is_fused(module)]

        def lora_step(inputs: dict[str, Any], new: bool) -> Any:
            if new:  # the same weights, through the fused forward or peft's own
                fused_lora.fuse(model)
            else:
                for layer in fused_layers:
                    vars(layer).pop("forward", None)
            value = loss.causal_lm_loss(model, inputs)
            value.backward()
            return value

        return model, batches, lora_step
    compiling.compile_layers(model, dynamic=True)
    layers = compiling.decoder_layers(model)
    compiled = [layer._compiled_call_impl for layer in layers]

    def compile_step(inputs: dict[str, Any], new: bool) -> Any:
        for layer, call in zip(layers, compiled, strict=True):  # the same weights, compiled or not
            layer._compiled_call_impl = call if new else None
        value = loss.causal_lm_loss(model, inputs)
        value.backward()
        return value

    return model, batches, compile_step


def dynamo_graphs() -> int:
    """Graphs dynamo has compiled so far in this process (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


HIGH_WATER = [0]
"""The largest resident memory seen by `measure` (KiB): the process's peak, as `clear_refs` resets the kernel's."""


def measure(step: Callable[[], None]) -> tuple[float, int]:
    """(seconds, bytes the step's peak resident memory rose above the RSS before it)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    started = time.perf_counter()
    step()
    took, high = time.perf_counter() - started, rss_kib("VmHWM")
    HIGH_WATER[0] = max(HIGH_WATER[0], high)
    return took, (high - before) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=tuple(ARMS), default="loss")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per arm (default 1; compile: 2)")
    parser.add_argument("--batch", type=int, default=None, help="records (pairs) per batch (default 8; pairs: 4)")
    parser.add_argument("--base", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled step of each arm")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:  # freed tensors must leave the RSS
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warmup = args.warmup if args.warmup is not None else (2 if args.compare == "compile" else 1)
    batch = args.batch or (4 if args.compare == "preference" else 8)

    import torch
    from torch.profiler import ProfilerActivity, profile
    from trainer_throughput import build_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    count = warmup + args.steps + (0 if args.no_profile else 1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = build_model(Path(scratch) / "model", args.base)
        model, batches, forward_backward = arms_for(args.compare, folder, count, batch)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    names = ARMS[args.compare]

    def step(inputs: dict[str, Any], new: bool) -> None:
        forward_backward(inputs, new)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds: dict[bool, list[float]] = {False: [], True: []}
    peaks: dict[bool, list[int]] = {False: [], True: []}
    warm: dict[bool, list[float]] = {False: [], True: []}
    graphs_before = dynamo_graphs()
    for inputs in batches[:warmup]:
        for new in (False, True):
            warm[new].append(round(measure(lambda: step(inputs, new))[0], 2))  # noqa: B023 - called at once
    graphs_warm = dynamo_graphs()
    timed = batches[warmup : warmup + args.steps]
    for inputs in timed:
        for new in (False, True):
            took, peak = measure(lambda: step(inputs, new))  # noqa: B023 - called at once
            seconds[new].append(took)
            peaks[new].append(peak)
    graphs_timed = dynamo_graphs()
    tables: dict[str, str] = {}
    top: dict[str, dict[str, float]] = {}
    if not args.no_profile:
        for new in (False, True):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(batches[-1], new)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
            top[names[new]] = {e.key: round(e.self_cpu_time_total / total, 3) for e in ranked}
            top[names[new]]["total_self_cpu_s"] = round(total / 1e6, 2)
            tables[names[new]] = events.table(sort_by="self_cpu_time_total", row_limit=args.top)
    for name, table in tables.items():
        print(f"== {name} (profiled step)\n{table}", file=sys.stderr)
    tokens = [int(b["input_ids"].numel()) for b in timed]
    ratios = [old / new for old, new in zip(seconds[False], seconds[True], strict=True)]
    results: dict[str, Any] = {"compare": args.compare, "base": args.base, "batch": batch, "timed_steps": len(timed)}
    for new in (False, True):
        results[names[new]] = {
            "seconds_per_step_median": round(median(seconds[new]), 3),
            "seconds_per_step_range": [round(min(seconds[new]), 3), round(max(seconds[new]), 3)],
            "tokens_per_second_median": round(median([t / s for t, s in zip(tokens, seconds[new], strict=True)]), 1),
            "step_peak_rss_mib_median": round(median([p / 2**20 for p in peaks[new]]), 1),
            "step_peak_rss_mib_range": [round(min(peaks[new]) / 2**20, 1), round(max(peaks[new]) / 2**20, 1)],
            "warmup_seconds": warm[new],
            "top_self_cpu_share": top.get(names[new], {}),
        }
    results["speedup_median"] = round(median(ratios), 3)  # first arm's time / second arm's, per pair of steps
    results["speedup_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    results["process_peak_rss_mib"] = round(HIGH_WATER[0] / 1024, 1)
    if args.compare == "compile":
        results["dynamo_graphs"] = {"warmup": graphs_warm - graphs_before, "timed": graphs_timed - graphs_warm}
    results["tokens_per_step"] = round(sum(tokens) / max(1, len(tokens)), 1)
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
