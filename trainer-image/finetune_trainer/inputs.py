"""Preparing the inputs of a run: base model folder, data, split, labels, tokenized datasets.

Why one step: everything that can be a user error about the inputs happens here, before the model's
weights are loaded or a GPU is busy, so a bad job fails within seconds of starting. On one node the
first local process downloads and tokenizes while the others wait, then they reuse its local copies.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer import data, schemas, split
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import ModelNotFound, StorageNotFound
from finetune_trainer.modeling import check_model_folder, load_tokenizer
from finetune_trainer.storage import S3Uri, Storage
from finetune_trainer.tokenization import ensure_chat_template, tokenize_split

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    model_folder: Path
    tokenizer: Any
    default_template: bool
    labels: list[str] | None
    splits: split.Splits
    tokenized: dict[str, Any]


def fetch_model(storage: Storage, uri: str, folder: Path) -> Path:
    """Download the base model folder once; a prefix with nothing under it is ModelNotFound."""
    location = S3Uri.parse(uri if uri.endswith("/") else uri + "/")
    try:
        found = storage.list(location)
    except StorageNotFound as error:
        raise StorageNotFound(f"baseModel.uri: {error}") from None
    if not found:
        raise ModelNotFound(f"baseModel.uri: no model files at {uri}")
    storage.download(location, folder)
    check_model_folder(folder, uri)
    return folder


def load_splits(storage: Storage, cfg: TrainerConfig, folder: Path) -> split.Splits:
    """Read train (and explicit validation/test) records and split them deterministically."""
    spec = cfg.dataset
    train = data.load_records(storage, spec.train.uri, spec.format, folder / "train", "dataset.train")
    validation = (
        data.load_records(storage, spec.validation.uri, spec.format, folder / "validation", "dataset.validation")
        if spec.validation
        else None
    )
    test = (
        data.load_records(storage, spec.test.uri, spec.format, folder / "test", "dataset.test") if spec.test else None
    )
    return split.split_records(train, validation, test, spec.split.validation, spec.split.test, spec.split.seed)


def sequence_limit(model_folder: Path, requested: int) -> int:
    """`maxSeqLength`, capped at the model's position limit (longer inputs would index past its table)."""
    try:
        model_config = json.loads((model_folder / "config.json").read_text())
    except (OSError, ValueError):
        return requested
    limit = model_config.get("max_position_embeddings")
    if isinstance(limit, int) and 0 < limit < requested:
        log.warning("dataset.maxSeqLength %d exceeds the model's %d positions; using %d", requested, limit, limit)
        return limit
    return requested


def prepare(storage: Storage, cfg: TrainerConfig, work: Path) -> Inputs:
    """Download, validate, split and tokenize; raises the contract's user errors on bad input."""
    splits = load_splits(storage, cfg, work / "data")
    spec = cfg.dataset
    examples = {name: schemas.normalize(records, spec.schema_, spec.columns) for name, records in splits.items()}
    labels = None
    if spec.schema_ == "classification":
        labels = schemas.label_names(
            [e["label"] for e in examples["train"]], cfg.base_model.labels, cfg.base_model.num_labels
        )
        for name, records in splits.items():
            ids = schemas.encode_labels(examples[name], [r.origin for r in records], labels)
            for example, label_id in zip(examples[name], ids, strict=True):
                example["label_id"] = label_id
    log.info("split: %s", ", ".join(f"{name} {len(records)}" for name, records in splits.items()))
    model_folder = fetch_model(storage, cfg.base_model.uri, work / "base-model")
    tokenizer = load_tokenizer(model_folder, cfg.base_model.uri)
    default_template = spec.schema_ == "chat" and ensure_chat_template(tokenizer)
    max_length = sequence_limit(model_folder, spec.max_seq_length)
    tokenized = {
        name: tokenize_split(examples[name], tokenizer, spec.schema_, max_length, work / "tokenized", name)
        for name in ("train", "validation", "test")
        if examples[name]
    }
    return Inputs(model_folder, tokenizer, default_template, labels, splits, tokenized)


def write_split(storage: Storage, run_uri: S3Uri, splits: split.Splits) -> None:
    """Record the exact records of each split under `run-N/split/` for audit."""
    for name, records in splits.items():
        storage.write_bytes(run_uri.join("split", f"{name}.jsonl"), split.to_jsonl(records), "application/x-ndjson")
