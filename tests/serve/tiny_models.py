"""Tiny models of the server tests: a causal LM, a LoRA adapter for it, and a Llama sequence classifier,
built from `finetune_trainer.devtools.tiny` with a tokenizer trained on CORPUS. Nothing comes from a hub.

The weights use a large initializer range so that logits are far apart: greedy decoding then does not
hinge on float rounding, and batched and one-by-one generation must agree exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.devtools import tiny

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a fine tuned model answers questions about kubernetes operators",
    "hello world, this is a tiny language model for tests",
    "café déjà vu naïve résumé 日本語 テスト emoji 🙂 done",
    "serving models over an openai compatible api with streaming",
] * 20

LABELS = ["negative", "neutral", "positive"]

# The server tests' Llama: 2 layers x 64 wide, 256 positions, far-apart logits.
LLAMA_SIZE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "max_position_embeddings": 256,
    "initializer_range": 0.5,
}


def train_tokenizer() -> PreTrainedTokenizerFast:
    """400 tokens trained on CORPUS; special tokens <s>, </s>, <pad> (no unk), no BOS added on encoding."""
    return tiny.train_tokenizer(CORPUS, vocab_size=400, unk_token=None, add_bos=False)


def build_causal_lm(folder: Path, seed: int = 0, positions: int = 256) -> Path:
    """The two-layer Llama with the test tokenizer, saved with full weights (`positions`: its context)."""
    size = {**LLAMA_SIZE, "max_position_embeddings": positions}
    return tiny.build_causal_lm(folder, train_tokenizer(), seed=seed, **size)


def build_lora_adapter(base: Path, folder: Path, seed: int = 1) -> Path:
    """A LoRA adapter (rank 4 on q/v) with non-zero weights (so it changes outputs) over `base`."""
    return tiny.build_lora_adapter(base, folder, seed=seed, rank=4, alpha=8, target_modules=("q_proj", "v_proj"))


def build_classifier(folder: Path, seed: int = 2) -> Path:
    """A two-layer Llama sequence classifier with LABELS in its config (full weights) and the test tokenizer."""
    import torch
    from transformers import LlamaForSequenceClassification

    tokenizer = train_tokenizer()
    torch.manual_seed(seed)
    config = tiny.llama_config(
        tokenizer,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        **LLAMA_SIZE,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    return folder


def write_serve_json(path: Path, **fields: Any) -> Path:
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


def publish(folder: Path, uri: str) -> str:
    """Upload a model folder as the trainer does (its files, then `_MANIFEST.json`) to `uri`, a run's
    `s3://.../run-N/model/`, with the AWS_* variables of the environment (the `s3_bucket` fixture's); returns it."""
    from finetune_trainer.core.s3_uri import S3Uri
    from finetune_trainer.core.storage import Storage
    from finetune_trainer.training.artifacts import upload_model

    upload_model(Storage(), folder, S3Uri.parse(uri))
    return uri
