"""Where a training step's time goes: torch.profiler over SmolLM2-135M (LoRA, fp32, CPU) training steps,
with the Trainer's stock loss (full logits) and with the label-position loss (`training.loss`).

Why: issue #30 asks for the profile before and after each change, not a guess. One process loads the model
once and runs the two paths on the same flattened micro-batches (the benchmark's records, batch 8,
max length 512), alternating stock / new step by step, so the machine's load falls on both alike; each
path gets one warm-up step, then `--steps` profiled steps (forward, backward, and an AdamW step over the
trainable parameters). It prints, per path, the total and the top operators by self CPU time, and the
share of the step spent in the head and loss (the `lm_head`/`loss` record_function ranges).

    python bench/profile_step.py [--steps 2] [--base smollm2|tiny] [--top 12]

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer-image"))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--base", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from finetune_trainer.config import parse_config
    from finetune_trainer.data.tokenization import tokenize_split
    from finetune_trainer.training import loss
    from finetune_trainer.training.modeling import apply_method, load_model, load_tokenizer
    from torch.profiler import ProfilerActivity, profile, record_function
    from trainer_throughput import build_model, variable_records
    from transformers import DataCollatorWithFlattening

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    batch = 8
    with tempfile.TemporaryDirectory() as scratch:
        folder = build_model(Path(scratch) / "model", args.base)
        cfg = parse_config({
            "job": {"namespace": "p", "name": "p", "run": 1},
            "baseModel": {"uri": "s3://p/model/"},
            "dataset": {"train": {"uri": "s3://p/t.jsonl"}, "schema": "prompt-completion", "maxSeqLength": 512},
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": 1, "batchSize": batch},
            "checkpointing": {"intervalSteps": 10},
            "output": {"uri": "s3://p/out/", "runUri": "s3://p/out/run-1/"},
        })  # fmt: skip
        tokenizer = load_tokenizer(folder, "p")
        records = variable_records((args.steps + 1) * batch, seed=0)
        data = tokenize_split(records, tokenizer, "prompt-completion", 512, None, "p")
        model = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    collate = DataCollatorWithFlattening(return_position_ids=True)  # type: ignore[no-untyped-call]
    batches = [
        dict(collate([{"input_ids": data[i]["input_ids"], "labels": data[i]["labels"]} for i in range(s, s + batch)]))
        for s in range(0, len(records), batch)
    ]

    def step(inputs: dict[str, Any], new: bool) -> None:
        with record_function("forward+loss"):
            value = loss.causal_lm_loss(model, inputs) if new else model(**inputs).loss
        with record_function("backward"):
            value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results: dict[str, Any] = {}
    tables: dict[str, str] = {}
    for new in (False, True):  # warm-up, one step each
        step(batches[0], new)
    profiles = {False: [], True: []}  # type: dict[bool, list[Any]]
    seconds = {False: 0.0, True: 0.0}
    for inputs in batches[1:]:
        for new in (False, True):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                started = time.perf_counter()
                step(inputs, new)
                seconds[new] += time.perf_counter() - started
            profiles[new].append(prof)
    tokens = sum(int(b["input_ids"].numel()) for b in batches[1:])
    for new in (False, True):
        name = "label-position loss" if new else "stock loss"
        events = profiles[new][-1].key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
        tables[name] = profiles[new][-1].key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
        results[name] = {
            "seconds_per_step": round(seconds[new] / (len(batches) - 1), 3),
            "tokens_per_second": round(tokens / seconds[new], 1),
            "top_self_cpu_share": {e.key: round(e.self_cpu_time_total / total, 3) for e in top},
        }
    for name, table in tables.items():
        print(f"== {name} (last profiled step)\n{table}", file=sys.stderr)
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    results["tokens_per_step"] = round(tokens / (len(batches) - 1), 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
