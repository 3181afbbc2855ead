"""Preparing the inputs of a run: base model folder, data, split, labels, tokenized datasets.

Why one step: everything that can be a user error about the inputs happens here, before the model's
weights are loaded or a GPU is busy, so a bad job fails within seconds of starting. `read_data` is every
data check without the model; `validate` (cli) runs it with the tokenizer only. On one node the
first local process downloads and tokenizes while the others wait, then they reuse its local copies.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core.errors import ConfigInvalid, DatasetInvalid, ModelInvalid, ModelNotFound, StorageNotFound
from finetune_trainer.core.fetch import download_model
from finetune_trainer.core.s3_uri import S3Uri, local_path
from finetune_trainer.core.storage import Storage
from finetune_trainer.data import formats, near_duplicates, readers, split, split_files
from finetune_trainer.data.chat_template import ensure_chat_template
from finetune_trainer.data.formats import Format
from finetune_trainer.data.formats.base import generation_unsupported
from finetune_trainer.data.labels import encode_labels, label_names
from finetune_trainer.data.readers import Record
from finetune_trainer.data.tokenization import TokenStats, tokenize_with_stats
from finetune_trainer.training import base_adapter
from finetune_trainer.training.modeling import check_model_folder, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class DataReport:
    """What was read and how: the format and why, files, exclusions, counts, overlap, tokens.

    Logged, written to `run-N/split/dataset.json` and metrics.json (`dataset`), and printed by `validate`.
    """

    schema: str
    detected: bool
    reason: str
    files: dict[str, list[str]]
    excluded_from_train: list[str]
    records: dict[str, int]
    overlap: dict[str, int]
    ignored_columns: list[str]
    tokens: dict[str, TokenStats] = field(default_factory=dict)
    split_sources: dict[str, str] = field(default_factory=dict)
    """Where each split came from: dataset.<name>, the file names in dataset.train's folder, or a fraction."""
    split_rule: str = ""
    """How the splits taken from train were sized (`split.Splits.rule`)."""
    near_overlap: dict[str, int] = field(default_factory=dict)
    near_examples: dict[str, list[str]] = field(default_factory=dict)
    """A few near-copy pairs per held-out split, by origin and similarity."""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "schemaDetected": self.detected,
            "schemaReason": self.reason,
            "files": self.files,
            "excludedFromTrain": self.excluded_from_train,
            "records": self.records,
            "overlapWithTrain": self.overlap,
            "nearOverlapWithTrain": self.near_overlap,
            "nearDuplicateThreshold": near_duplicates.THRESHOLD,
            "nearOverlapExamples": self.near_examples,
            "overlapLimit": split.OVERLAP_LIMIT,
            "splitSources": self.split_sources,
            "splitRule": self.split_rule,
            "ignoredColumns": self.ignored_columns,
            "tokens": {name: stats.to_json() for name, stats in self.tokens.items()},
        }


@dataclass
class Data:
    """The records of a run, split, read into their format, with the classifier's labels."""

    format: Format
    splits: split.Splits
    examples: dict[str, list[dict[str, Any]]]
    labels: list[str] | None
    report: DataReport


@dataclass
class Inputs:
    model_folder: Path
    tokenizer: Any
    default_template: bool
    labels: list[str] | None
    splits: split.Splits
    tokenized: dict[str, Any]
    report: DataReport
    test_examples: list[dict[str, Any]] = field(default_factory=list)
    """The test split's normalised examples, in split order: prompts and references of evaluation.generation."""


def fetch_model(storage: Storage, uri: str, folder: Path) -> Path:
    """Download the base model folder once; a prefix with nothing under it is ModelNotFound. A folder with a
    `_MANIFEST.json` (a model this trainer wrote, used as a base) is verified against it (core/fetch.py)."""
    location = _model_location(storage, uri)
    download_model(storage, location, folder, require_manifest=False)
    check_model_folder(folder, uri)
    return folder


def _model_location(storage: Storage, uri: str) -> S3Uri:
    location = S3Uri.parse(uri if uri.endswith("/") else uri + "/")
    try:
        found = storage.list(location)
    except StorageNotFound as error:
        raise StorageNotFound(f"baseModel.uri: {error}") from None
    if not found:
        raise ModelNotFound(f"baseModel.uri: no model files at {uri}")
    return location


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


def fetch_tokenizer(storage: Storage, uri: str, folder: Path) -> Path:
    """Download the base model folder without its weights (config, tokenizer, chat template): for `validate`."""
    location = _model_location(storage, uri)
    for obj in storage.list(location):
        if not obj.uri.key.endswith(WEIGHT_SUFFIXES):
            storage.download_file(obj.uri, local_path(obj.uri, location, folder), obj)
    if not (folder / "config.json").is_file():
        raise ModelInvalid(f"{uri} is not a Hugging Face model folder: no config.json")
    return folder


CHAT_KINDS = ("messages", "preference")
"""Formats rendered with the chat template (the trainer's default one when the tokenizer has none)."""

SplitRecords = dict[str, list[Record] | None]


@dataclass
class SplitFiles:
    """The files of each split, why they are in it, and the train files taken out of the train URI."""

    train: list[readers.DataFile]
    held_out: dict[str, list[readers.DataFile]]
    sources: dict[str, str]
    excluded: list[str]


def _named_splits(
    uri: str, files: list[readers.DataFile], given: set[str]
) -> tuple[dict[str, list[readers.DataFile]], str]:
    """A folder's files by the split their names say (`split_files.by_name`), and the rule that said it; a
    held-out split named by files that `dataset.<split>` also gives is refused (one split, one source)."""
    folder = split_files.folder_paths(uri, [f.obj.uri.key for f in files])
    named = split_files.by_name(folder[1], folder[0]) if folder else None
    if folder is None or named is None:
        return {"train": files}, ""
    by_path = dict(zip(folder[1], files, strict=True))
    found = {name: [by_path[path] for path in paths] for name, paths in named.files.items()}
    for name in sorted(given & set(found)):
        raise DatasetInvalid(
            f"dataset.{name} is given, and dataset.train's folder {folder[0]} also holds {found[name][0].obj.uri}, "
            f"named as the {name} split ({named.rule}); a split cannot come from both: move that file out of the "
            f"folder, or leave dataset.{name} out to use the folder's {name} file(s)"
        )
    if not found.get("train"):
        names = ", ".join(str(f.obj.uri) for part in found.values() for f in part[:3])
        raise DatasetInvalid(
            f"dataset.train: every data file in {folder[0]} is named as a held-out split ({names}; {named.rule}); "
            "to train on such a file, name it (or a key prefix such as s3://bucket/data/test-) in dataset.train"
        )
    for name in ("validation", "test"):
        for item in found.get(name, []):
            log.warning("dataset.train: %s is named as %s (%s): read as %s, never trained on", item.obj.uri, name,
                        named.rule, name)  # fmt: skip
    return found, named.rule


def _split_files(storage: Storage, cfg: TrainerConfig) -> SplitFiles:
    """The files of each split: explicit validation/test URIs, then the train URI's files (those also given as
    validation/test taken out), split by their names when the train URI is a folder that names them."""
    spec = cfg.dataset
    refs = {"validation": spec.validation, "test": spec.test}
    held = {
        name: readers.list_files(storage, ref.uri, spec.format, f"dataset.{name}")
        for name, ref in refs.items()
        if ref is not None
    }
    listed = readers.list_files(storage, spec.train.uri, spec.format, "dataset.train")
    train_files, excluded = split.exclude_held_out(listed, held)
    if not train_files:
        raise DatasetInvalid(
            f"dataset.train: every data file at {spec.train.uri} is also dataset.validation or dataset.test "
            f"({', '.join(excluded)}); point dataset.train at the training files (a folder or a key prefix such "
            "as s3://bucket/data/train-)"
        )
    for uri in excluded:
        log.warning("dataset.train: %s is a held-out file (dataset.validation/test): not trained on", uri)
    found, rule = _named_splits(spec.train.uri, train_files, set(held))
    sources = {"train": "dataset.train"}
    fractions = {"validation": spec.split.validation, "test": spec.split.test}
    for name in ("validation", "test"):
        if name in held:
            sources[name] = f"dataset.{name}"
        elif name in found:
            sources[name] = f"file names in dataset.train ({rule})"
            held[name] = found[name]
        elif fractions[name] > 0:
            sources[name] = f"dataset.split.{name} {fractions[name]:g} of dataset.train (seed {spec.split.seed})"
        else:
            sources[name] = f"none (dataset.split.{name} is 0)"
    return SplitFiles(found["train"], held, sources, excluded)


def _read_split_files(
    storage: Storage, cfg: TrainerConfig, folder: Path
) -> tuple[SplitRecords, dict[str, list[str]], list[str], dict[str, str]]:
    """Records of train and of the held-out files (explicit, or named by split in the train folder); the
    files per split, the held-out files the train URI also listed, and where each split comes from."""
    spec = cfg.dataset
    files = _split_files(storage, cfg)
    records: dict[str, list[Record] | None] = {
        "train": readers.read_files(storage, spec.train.uri, files.train, folder / "train", "dataset.train")
    }
    uris = {
        "train": spec.train.uri,
        **{name: ref.uri for name in ("validation", "test") if (ref := getattr(spec, name))},
    }
    for name in ("validation", "test"):
        part = files.held_out.get(name)
        base = uris.get(name, spec.train.uri)
        records[name] = readers.read_files(storage, base, part, folder / name, f"dataset.{name}") if part else None
    listing = {"train": [str(f.obj.uri) for f in files.train]}
    listing.update({name: [str(f.obj.uri) for f in found] for name, found in files.held_out.items()})
    return records, listing, files.excluded, files.sources


def read_data(storage: Storage, cfg: TrainerConfig, folder: Path) -> Data:
    """Read, choose the format, split, normalise, label and check for leakage: every data error, no model."""
    spec = cfg.dataset
    records, files, excluded, sources = _read_split_files(storage, cfg, folder)
    train = records["train"] or []
    detection = formats.resolve(train, spec.schema_, cfg.base_model.task, spec.columns)
    fmt = detection.format
    log.info("dataset.schema %s (%s%s)", fmt.name, "detected: " if detection.detected else "", detection.reason)
    if problem := formats.objective_mismatch(fmt, cfg.method.objective):
        raise DatasetInvalid(problem)
    if cfg.evaluation.generation is not None and (reason := generation_unsupported(fmt)):
        raise ConfigInvalid(f"evaluation.generation: {reason}")
    normalised = formats.normalize(train, fmt, spec.columns)
    keys = [split.content_hash(example) for example in normalised]
    splits = split.split_records(
        train, records["validation"], records["test"], spec.split.validation, spec.split.test, spec.split.seed, keys
    )
    by_origin = {record.origin: example for record, example in zip(train, normalised, strict=True)}
    held_out = {
        name: formats.normalize(given, fmt, spec.columns)
        for name in ("validation", "test")
        if (given := records[name]) is not None
    }
    examples = {
        name: held_out[name] if name in held_out else [by_origin[r.origin] for r in part]
        for name, part in splits.items()
    }
    labels = None
    if fmt.kind == "classification":
        labels = label_names([e["label"] for e in examples["train"]], cfg.base_model.labels, cfg.base_model.num_labels)
        for name, part in splits.items():
            ids = encode_labels(examples[name], [r.origin for r in part], labels)
            for example, label_id in zip(examples[name], ids, strict=True):
                example["label_id"] = label_id
    ignored = formats.ignored_columns([r for _, part in splits.items() for r in part], fmt, spec.columns)
    if ignored:
        log.warning(
            "dataset: column(s) %s are not part of schema %s (fields: %s) and are not trained on",
            ", ".join(ignored),
            fmt.name,
            ", ".join(fmt.fields),
        )
    counts = split.overlap(examples)
    pairs = near_duplicates.near_pairs(examples)
    near = {name: len(found) for name, found in pairs.items()}
    shown = {
        name: [
            f"{getattr(splits, name)[p.held_out].origin} ~ {splits.train[p.train].origin} ({p.similarity:.2f})"
            for p in found[:3]
        ]
        for name, found in pairs.items()
    }
    sizes = {name: len(part) for name, part in splits.items()}
    log.info(
        "split: %s (%s); held-out records also in train: validation %d, test %d; near-copies of a train record "
        "(similarity >= %.2f): validation %d, test %d",
        ", ".join(f"{name} {n}" for name, n in sizes.items()),
        "; ".join(f"{name} from {source}" for name, source in sources.items()),
        counts["validation"],
        counts["test"],
        near_duplicates.THRESHOLD,
        near["validation"],
        near["test"],
    )
    if splits.rule:
        log.info("split rule: %s", splits.rule)
    split.check_overlap(counts, sizes, near, {name: pairs[0] for name, pairs in shown.items() if pairs})
    report = DataReport(
        fmt.name, detection.detected, detection.reason, files, excluded, sizes, counts, ignored,
        split_sources=sources, split_rule=splits.rule, near_overlap=near, near_examples=shown,
    )  # fmt: skip
    return Data(fmt, splits, examples, labels, report)


def tokenize_data(d: Data, tokenizer: Any, max_length: int, cache: Path | None) -> dict[str, Any]:
    """Each non-empty split tokenized; fills `d.report.tokens`."""
    tokenized = {}
    for name, part in d.splits.items():
        if not part:
            continue
        dataset, stats = tokenize_with_stats(
            d.examples[name], tokenizer, d.format.name, max_length, cache, name, [r.origin for r in part]
        )
        tokenized[name] = dataset
        d.report.tokens[name] = stats
    return tokenized


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
    d = read_data(storage, cfg, work / "data")
    model_folder = fetch_model(storage, cfg.base_model.uri, work / "base-model")
    model_folder = base_adapter.merged_base(storage, cfg, model_folder, work)  # baseModel.adapter merged in
    tokenizer = load_tokenizer(model_folder, cfg.base_model.uri)
    default_template = d.format.kind in CHAT_KINDS and ensure_chat_template(tokenizer)
    max_length = sequence_limit(model_folder, cfg.dataset.max_seq_length)
    tokenized = tokenize_data(d, tokenizer, max_length, work / "tokenized")
    return Inputs(
        model_folder, tokenizer, default_template, d.labels, d.splits, tokenized, d.report, d.examples.get("test", [])
    )


def write_split(storage: Storage, run_uri: S3Uri, splits: split.Splits, report: DataReport | None = None) -> None:
    """Record the exact records of each split under `run-N/split/` for audit, and how they were read."""
    for name, records in splits.items():
        storage.write_bytes(run_uri.join("split", f"{name}.jsonl"), split.to_jsonl(records), "application/x-ndjson")
    if report is not None:
        body = json.dumps(report.to_json(), indent=2).encode()
        storage.write_bytes(run_uri.join("split", "dataset.json"), body, "application/json")
