"""The memory plan's estimate against the peak memory of real training steps on CPU (fp32), within 25%.

What runs: the trainer's own pieces (`modeling.load_model`, `apply_method`, `train.training_arguments`,
`train.collator_for`, `train.trainer_class`: the Trainer with the label-position loss and its default fused
AdamW), for the tiny Llama of
`devtools.tiny` and for SmolLM2-135M (the folder `devtools.smollm2` converted, when it is in the cache;
otherwise a random-weight Llama built from SmolLM2's config.json, which has the same memory shape), with
LoRA and full fine-tuning, with and without gradient checkpointing. Every record is exactly
`maxSeqLength` tokens, so a flattened micro-batch holds the plan's `batchSize x maxSeqLength` tokens.

How peak memory is measured on CPU: all cases run one after the other in one fresh Python process, after a
warm-up step on a tiny model (lazy imports and one-time buffers are then paid). glibc's mmap threshold is
pinned (`MALLOC_MMAP_THRESHOLD_`), so every tensor above 64 KiB is its own mapping, returned to the kernel
when freed: resident memory then follows live tensors, as CUDA's allocator statistics would. For each case
the baseline is the RSS before its model exists; once the model is loaded, the kernel's high-water mark is
reset (`echo 5 > /proc/self/clear_refs`), so load-time copies do not count; after two optimizer steps (the
first creates the Adam states, the second runs with them; no checkpoint is saved) the peak is
`VmHWM - baseline`. That is compared with the plan's peak without its fixed per-process overhead (the
baseline is that overhead). torch's CPU allocator keeps no peak statistics, and the profiler's memory
records cost more than the steps themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 0.25
STEPS = 2
"""The first step creates the optimizer states, the second runs with them."""
CASES = [
    # (model, method, gradient checkpointing, micro-batch, sequence length)
    ("tiny", "lora", False, 4, 256),
    ("tiny", "lora", True, 4, 256),
    ("tiny", "full", False, 4, 256),
    ("tiny", "full", True, 4, 256),
    ("smollm2", "lora", False, 2, 64),
    ("smollm2", "lora", True, 2, 64),
    ("smollm2", "full", False, 2, 64),
    ("smollm2", "full", True, 2, 64),
]
TINY = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _model_folder(model: str, work: Path) -> Path:
    """The model to train: the tiny Llama built here, or SmolLM2 (converted if cached, else random)."""
    from finetune_trainer.devtools import tiny

    if model == "tiny":
        tokenizer = tiny.train_tokenizer(tiny.word_corpus(), vocab_size=300)
        return tiny.build_causal_lm(work / "tiny", tokenizer, seed=0, **TINY)
    try:
        from finetune_trainer.devtools import smollm2

        folder = smollm2.cache_root() / "models" / f"{smollm2.NAME}-{smollm2.VERSION}-float32"
        if (folder / "config.json").is_file():
            return folder
    except ImportError:
        pass
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = work / "smollm2-random"
    LlamaForCausalLM(LlamaConfig(**SMOLLM2_CONFIG)).save_pretrained(str(folder))
    return folder


SMOLLM2_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def _train(folder: Path, method: str, checkpointing: bool, batch: int, seq: int, work: Path) -> int:
    """Train `STEPS` steps of one case; the peak resident bytes above the RSS before the model existed."""
    import gc

    import torch
    from datasets import Dataset
    from finetune_trainer.config import parse_config
    from finetune_trainer.training.modeling import Hardware, apply_method, load_model
    from finetune_trainer.training.train import collator_for, trainer_class, training_arguments

    config = json.loads((folder / "config.json").read_text())
    cfg = parse_config(
        {
            "job": {"namespace": "t", "name": "memory", "run": 1},
            "baseModel": {"uri": "s3://models/m/"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "text", "maxSeqLength": seq},
            "method": {"type": method, "lora": {"rank": 8, "targetModules": ["all-linear"]}},
            "hyperparameters": {
                "batchSize": batch,
                "maxSteps": STEPS,
                "precision": "fp32",
                "gradientCheckpointing": checkpointing,
            },
            "checkpointing": {"intervalSteps": 1000},
            "output": {"uri": "s3://out/x/", "runUri": "s3://out/x/run-1/"},
        }
    )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config["vocab_size"], (STEPS * batch, seq), generator=generator).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
    gc.collect()
    baseline = _rss_kib("VmRSS") * 1024
    trained = apply_method(load_model(cfg, folder, None, "fp32"), cfg)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here: load-time copies do not count
    cpu = Hardware(cuda=False, bf16=False, bitsandbytes=False)
    args = training_arguments(cfg, "fp32", cpu, work / "checkpoints", STEPS)  # hyperparameters.gradientCheckpointing
    assert args.activation_checkpointing is checkpointing  # transformers 5's name (gradient_checkpointing before)
    args.save_strategy = "no"  # checkpoints go to local disk: not what a GPU's memory holds
    trainer = trainer_class(cfg)(  # the run's own class: the label-position loss the plan counts
        model=trained, args=args, train_dataset=dataset, data_collator=collator_for(cfg, None)
    )
    trainer.train()
    peak = _rss_kib("VmHWM") * 1024 - baseline
    del trainer, trained
    gc.collect()
    return peak


def measure(work: Path) -> dict[str, Any]:
    """Run in a fresh process: every case, one after the other; each model's config.json and the peaks."""
    import torch

    torch.set_num_threads(2)
    folders = {model: _model_folder(model, work) for model in ("tiny", "smollm2")}
    _train(folders["tiny"], "lora", True, 2, 16, work)  # warm-up: lazy imports and one-time buffers do not count
    return {
        "configs": {model: json.loads((folder / "config.json").read_text()) for model, folder in folders.items()},
        "peaks": {case_id(case): _train(folders[case[0]], *case[1:], work=work) for case in CASES},
    }


def case_id(case: tuple[str, str, bool, int, int]) -> str:
    model, method, checkpointing, _, _ = case
    return f"{model}-{method}-{'checkpointing' if checkpointing else 'plain'}"


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`measure()` in a fresh interpreter (this file run as a script), once for all the cases."""
    env = dict(os.environ)
    env.update(
        MALLOC_MMAP_THRESHOLD_="65536",
        OMP_NUM_THREADS="2",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(ROOT / "trainer-image"), str(ROOT), env.get("PYTHONPATH", "")]),
    )
    argv = [sys.executable, __file__, str(tmp_path_factory.mktemp("memory-plan"))]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def estimated(config: dict[str, Any], method: str, checkpointing: bool, batch: int, seq: int) -> int:
    """The plan's peak for the case, without the fixed per-process overhead (the measured baseline)."""
    from finetune_trainer.memory.estimate import CPU_PROCESS, Method, Setup, estimate
    from finetune_trainer.memory.gpus import cpu
    from finetune_trainer.memory.shapes import model_shape

    setup = Setup(
        method=Method(method, 8, ("all-linear",), 0.05),  # type: ignore[arg-type]
        precision="fp32",
        gradient_checkpointing=checkpointing,
        micro_batch=batch,
        seq_length=seq,
    )
    return estimate(model_shape(config), setup, cpu(64 << 30)).total - CPU_PROCESS


@pytest.mark.slow
@pytest.mark.parametrize(("model", "method", "checkpointing", "batch", "seq"), CASES, ids=[case_id(c) for c in CASES])
def test_estimate_within_25_percent_of_measured_peak(
    model: str, method: str, checkpointing: bool, batch: int, seq: int, measured: dict[str, Any]
) -> None:
    peak = measured["peaks"][case_id((model, method, checkpointing, batch, seq))]
    estimate = estimated(measured["configs"][model], method, checkpointing, batch, seq)
    mib = 1 << 20
    figures = f"estimate {estimate / mib:.1f} MiB, measured {peak / mib:.1f} MiB, ratio {estimate / peak:.2f}"
    print(f"{case_id((model, method, checkpointing, batch, seq))}: {figures}")
    assert abs(estimate - peak) <= TOLERANCE * peak, figures


@pytest.mark.slow
@pytest.mark.parametrize(("model", "method"), [("tiny", "lora"), ("tiny", "full"), ("smollm2", "lora")])
def test_gradient_checkpointing_lowers_the_measured_peak(model: str, method: str, measured: dict[str, Any]) -> None:
    """hyperparameters.gradientCheckpointing, through the trainer's TrainingArguments, frees the activations:
    the measured peak drops where activations are the peak (not SmolLM2's full fine-tune, whose peak is the
    optimizer step's weights, gradients and Adam states)."""
    plain = measured["peaks"][f"{model}-{method}-plain"]
    checkpointed = measured["peaks"][f"{model}-{method}-checkpointing"]
    print(f"{model}-{method}: {plain / (1 << 20):.1f} MiB -> {checkpointed / (1 << 20):.1f} MiB with checkpointing")
    assert checkpointed < 0.75 * plain


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]))))
