"""The GPU check (`bench/gpu_check.sh`): QLoRA, LoRA and full fine-tune steps through the trainer's own code.

Why one script: a lent GPU is minutes of device time; everything it should measure is prepared here and
checked on CPU first (`--tiny`). Each method runs in its own subprocess (its peak memory is its own) with the
trainer's model loading, method, precision, collator and TrainingArguments (`modeling.load_model`,
`apply_method`, `train.training_arguments`, `collator_for`): bf16 on GPUs (fp32 master weights for full
fine-tuning, frozen bf16 base for LoRA, NF4 for QLoRA), flattened micro-batches, flash-attention 2 where the
package is installed (else SDPA). The model is a ~1.2B Llama-3.2-1B shape with random weights built from a
config (no hub); records are random tokens of exactly `--seq` tokens, so every figure is exact.

MFU (model FLOPs utilisation) = tokens/s x FLOPs per token / the GPU's dense bf16 peak (`gpus.py`):

    FLOPs per token = 6 N            (full: forward 2N, backward 4N: input and weight gradients)
                    = 4 N + 6 N_a    (LoRA/QLoRA: the frozen weights need input gradients only; adapters N_a)
                    + 6 L d S        (causal attention: QK^T and AV, 2 x 2 L d S/2 forward, x3 with backward)

with N the parameters of every matmul (the blocks' linears and the LM head; the input embedding is a lookup),
L layers, d = heads x head_dim, S the record length. Gradient checkpointing's recompute is not counted (the
usual convention: MFU counts the model's FLOPs, not the hardware's). The peak memory is compared with the
memory plan's estimate for the same setup (`memory.plan.plan`, the device as the trainer sees it) less what
the measurement cannot see (`peak_vs_plan`): on GPUs the peak is torch's reserved memory, without the CUDA
context; on CPU the resident memory above what the process held before the model, without the plan's fixed
per-process overhead.

Variants (issue #30: the new paths, each measured against the plain run of the same method, so the first GPU
lent measures them): `eager` (the trainer as it runs today: bf16, fused AdamW, the label-position loss,
flash-attention 2's variable-length kernel fed by the flattened batch's position ids where the flash-attn
package is installed, else SDPA; which one ran is recorded per run), `records` (attention record by record,
`training.segmented_attention`: one causal SDPA per record of the flattened batch instead of SDPA over its
T x T block-diagonal mask; the trainer picks it on CPU only, so this measures on a GPU whether it pays there,
against flash-attention's varlen kernel or the masked SDPA, whichever `eager` ran), `compile` (the same with the decoder
layers compiled, `training.compiling`, inductor, dynamic shapes: the first steps pay the compile, reported
as `warmup_seconds`), `liger` (Liger's Triton kernels for RoPE, RMSNorm and SwiGLU patched into the model
before the method is applied, where the optional `liger-kernel` package is importable; otherwise the run says
it was skipped and why; the loss stays ours). `--variant-methods` says which methods get the non-eager
variants (default lora,full). Runs stop being started once `--budget-s` seconds have passed (default 540, so
the check ends within the 10 minutes of a lent GPU); the ones left out are listed as skipped. `--dry-run`
prints the plan (methods x variants, the commands) and runs nothing.

The last line of output is one JSON object. On CPU the MFU is null (no tensor-core peak to compare with).
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer-image"))

METHODS = ("qlora", "lora", "full")
VARIANTS = ("eager", "records", "compile", "liger")
LLAMA_1B = {  # Llama-3.2-1B's shape
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "tie_word_embeddings": True,
}


def build_model(folder: Path, shape: dict[str, Any]) -> Path:
    """A Llama with random weights (seed 0) saved in bf16 to `folder`: what the trainer loads from storage."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(max_position_embeddings=8192, use_cache=False, **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]  # transformers' typed wrapper of Module.to
    model.save_pretrained(str(folder))
    return folder


def flops_per_token(config: dict[str, Any], method: str, adapters: int, seq: int) -> float:
    """The formula of the module docstring."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = h // heads
    linear = layers * (2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * config["intermediate_size"])
    matmuls = linear + config["vocab_size"] * h  # + the LM head (tied or not, it is a matmul)
    dense = 6 * matmuls if method == "full" else 4 * matmuls + 6 * adapters
    return float(dense + 6 * layers * heads * head_dim * seq)


def liger_patch(model: Any) -> str | None:
    """Liger's RoPE, RMSNorm and SwiGLU kernels patched into `model` (a Llama); None, or why not."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError as error:
        return f"liger-kernel is not installed ({error})"
    apply_liger_kernel_to_llama(
        rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model
    )
    return None


def child(method: str, folder: Path, steps: int, warmup: int, batch: int, seq: int, variant: str) -> dict[str, Any]:
    """One method in this process: train `steps` steps, time the ones after `warmup`, measure the peak."""
    import torch
    from finetune_trainer.config import parse_config
    from finetune_trainer.core.errors import UnsupportedHardware
    from finetune_trainer.memory.check import runtime_device
    from finetune_trainer.memory.estimate import CPU_PROCESS, CUDA_CONTEXT
    from finetune_trainer.memory.plan import plan, setup_of
    from finetune_trainer.training import compiling
    from finetune_trainer.training.modeling import Hardware, apply_method, check_method, choose_precision, load_model
    from finetune_trainer.training.train import collator_for, trainer_class, training_arguments
    from transformers import TrainerCallback

    hardware = Hardware.detect()
    cfg = parse_config(
        {
            "job": {"namespace": "bench", "name": "gpu-check", "run": 1},
            "baseModel": {"uri": "s3://bench/model/"},
            "dataset": {"train": {"uri": "s3://bench/train.jsonl"}, "schema": "text", "maxSeqLength": seq},
            "method": {"type": method, "lora": {"rank": 16, "alpha": 32, "dropout": 0.0}},
            "hyperparameters": {
                "maxSteps": steps,
                "batchSize": batch,
                "learningRate": 1e-5,
                "warmupRatio": 0.0,
                "lrScheduler": "constant",
                "gradientCheckpointing": False,
            },
            "checkpointing": {"intervalSteps": 10 * steps},
            "output": {"uri": "s3://bench/out/", "runUri": "s3://bench/out/run-1/"},
        }
    )
    try:
        check_method(cfg, hardware)
    except UnsupportedHardware as error:
        return {"skipped": str(error)}
    precision = choose_precision("auto", hardware)
    config = json.loads((folder / "config.json").read_text())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if variant == "liger" and not hardware.cuda:
        return {"skipped": "Liger's kernels are Triton GPU kernels: no CUDA here"}
    loaded = load_model(cfg, folder, None, precision)
    if variant == "liger" and (why := liger_patch(loaded)) is not None:
        return {"skipped": why}
    if variant == "records":
        from finetune_trainer.training import segmented_attention

        loaded.set_attn_implementation(segmented_attention.register())
    model = apply_method(loaded, cfg)
    if hardware.cuda and method != "qlora":
        model = model.to("cuda")
    if variant == "compile":
        compiling.compile_layers(model, dynamic=True)
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad) if method != "full" else 0
    rng = random.Random(0)
    records = [
        {"input_ids": ids, "labels": list(ids)}
        for ids in ([rng.randrange(3, config["vocab_size"]) for _ in range(seq)] for _ in range(steps * batch))
    ]
    marks: list[float] = []
    begun: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            begun.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if hardware.cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as scratch:
        args = training_arguments(cfg, precision, hardware, Path(scratch), steps)
        args.save_strategy = "no"
        args.train_sampling_strategy = "sequential"
        if hardware.cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = trainer_class(cfg)(  # the run's own: loss at label positions, no full logits
            model=model, args=args, train_dataset=records, data_collator=collator_for(cfg, None), callbacks=[Clock()]
        )
        trainer.train()
    seconds = marks[-1] - marks[warmup - 1]
    warm = [round(b - a, 3) for a, b in zip([begun[0], *marks[: warmup - 1]], marks[:warmup], strict=True)]
    tokens_per_second = (steps - warmup) * batch * seq / seconds
    device = runtime_device(hardware.cuda, 1, dict(os.environ))
    estimate = plan(config, setup_of(cfg, longest_record=seq), device).total
    # what the measurement can see: torch's reserved memory has no CUDA context; the resident-memory delta on
    # CPU has no interpreter, torch or data (the plan's fixed per-process overhead)
    comparable = estimate - (CUDA_CONTEXT if hardware.cuda else CPU_PROCESS)
    if hardware.cuda:
        peak = int(torch.cuda.max_memory_reserved())
        allocated: int | None = int(torch.cuda.max_memory_allocated())
    else:  # resident memory above what the process held before the model: the plan's CPU terms
        peak, allocated = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024, None
    per_token = flops_per_token(config, method, adapters, seq)
    tflops = device.peak_tflops if hardware.cuda else None
    return {
        "tokens_per_second": round(tokens_per_second, 1),
        "timed_steps": steps - warmup,
        "seconds": round(seconds, 3),
        "flops_per_token": per_token,
        "mfu": round(tokens_per_second * per_token / (tflops * 1e12), 4) if tflops else None,
        "peak_memory_bytes": peak,
        "peak_allocated_bytes": allocated,
        "plan_estimate_bytes": estimate,
        "peak_vs_plan": round(peak / comparable, 3),
        "trainable_parameters": adapters or sum(p.numel() for p in model.parameters()),
        "precision": precision,
        "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "variant": variant,
        "warmup_seconds": warm,
        "compiled": compiling.is_compiled(model),
    }


def plan_runs(methods: list[str], variants: list[str], variant_methods: list[str]) -> list[tuple[str, str]]:
    """(method, variant) in the order they run: every method eager first, then the other variants of the
    methods that get them. Unknown names are refused, by name."""
    for name in methods:
        if name not in METHODS:
            raise SystemExit(f"--methods: unknown method {name!r} (one of {', '.join(METHODS)})")
    for name in variants:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {name!r} (one of {', '.join(VARIANTS)})")
    for name in variant_methods:
        if name not in METHODS:
            raise SystemExit(f"--variant-methods: unknown method {name!r} (one of {', '.join(METHODS)})")
    runs = [(method, "eager") for method in methods if "eager" in variants]
    runs += [(m, v) for v in variants if v != "eager" for m in methods if m in variant_methods]
    return runs


def child_command(method: str, variant: str, folder: Path, steps: int, warmup: int, batch: int, seq: int) -> list[str]:
    command = [sys.executable, __file__, "--child", method, "--variant", variant, "--model", str(folder)]
    return [*command, "--steps", str(steps), "--warmup", str(warmup), "--batch", str(batch), "--seq", str(seq)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama: runs on CPU in seconds (CI)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="records per micro-batch")
    parser.add_argument("--seq", type=int, default=None, help="tokens per record")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="eager, records, compile, liger (see above)")
    parser.add_argument("--variant-methods", default="lora,full", help="methods that get the non-eager variants")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no run after this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, default="eager", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = args.steps or (4 if args.tiny else 20)
    warmup = args.warmup or (1 if args.tiny else 5)
    batch = args.batch or (2 if args.tiny else 4)
    seq = args.seq or (64 if args.tiny else 2048)
    if args.child:
        print(json.dumps(child(args.child, args.model, steps, warmup, batch, seq, args.variant)))
        return
    runs = plan_runs(args.methods.split(","), args.variants.split(","), args.variant_methods.split(","))
    if args.dry_run:
        for method, variant in runs:
            command = child_command(method, variant, Path("<model>"), steps, warmup, batch, seq)
            print(json.dumps({"method": method, "variant": variant, "command": command}))
        print(json.dumps({"mode": "dry-run", "runs": [f"{m}/{v}" for m, v in runs], "budget_s": args.budget_s}))
        return
    started = time.monotonic()
    shape = TINY if args.tiny else LLAMA_1B
    import torch

    cuda = torch.cuda.is_available()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = build_model(Path(scratch) / "model", shape)
        for method, variant in runs:
            name = method if variant == "eager" else f"{method}+{variant}"
            if time.monotonic() - started > args.budget_s:
                results[name] = {"skipped": f"the check's budget of {args.budget_s:.0f} s was spent"}
                continue
            command = child_command(method, variant, folder, steps, warmup, batch, seq)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer-image"), env.get("PYTHONPATH", "")])
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if done.returncode != 0:
                results[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"}
                print(done.stderr[-3000:], file=sys.stderr)
            else:
                results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name}: {results[name]}", file=sys.stderr)
    from finetune_trainer.memory.check import runtime_device

    device = runtime_device(cuda, 1, dict(os.environ))
    print(
        json.dumps(
            {
                "mode": "tiny" if args.tiny else "gpu",
                "device": device.name,
                "peak_tflops": device.peak_tflops if cuda else None,
                "model": ("tiny llama" if args.tiny else "llama-3.2-1b shape") + " (random weights)",
                "shape": shape,
                "batch": batch,
                "seq": seq,
                "steps": steps,
                "warmup": warmup,
                "mfu_formula": "(6N full | 4N + 6N_adapters lora/qlora) + 6*L*d*S per token; N: every matmul",
                "methods": results,
                "vllm": {"skipped": "not part of this script yet: serving the adapter with the vLLM image"},
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
