"""Fetch the model from object storage and load it for inference: base + LoRA adapter, or full weights.

Why here and not in the engine: loading is the only slow, failure-prone step of the server (network,
disk, a folder that is not a model), it runs once on a background thread while /readyz says 503, and
its failures must carry the contract's codes (ModelNotFound, ModelInvalid, Storage*) so the log says
what to fix. A LoRA adapter is merged into the base weights after loading: inference then costs the
same as the base model, with no adapter arithmetic per step.

Labels of a classifier come from, in order: the model folder's config.json `id2label`, the resolved
trainer's `finetune_config.json` beside the model (`labels` / `numLabels`),
the base model's config. `finetune_config.json` is what the trainer writes beside the model
(`finetune_trainer.training.artifacts`); when it names a task, serve.json must agree.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_trainer.core.errors import ConfigInvalid, ModelInvalid, ModelNotFound
from finetune_trainer.serving.server.config import Device, ServeConfig, Task

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference and what the server needs to know about it."""

    model: Any
    tokenizer: Any
    task: Task
    device: torch.device
    context_length: int
    eos_token_ids: frozenset[int]
    pad_token_id: int
    labels: tuple[str, ...] = ()


def fetch(uri: str, dest: Path) -> Path:
    """A local folder with what `uri` names: s3:// is downloaded into `dest`, a local path used as is."""
    if uri.startswith("s3://"):
        from finetune_trainer.core.s3_uri import S3Uri
        from finetune_trainer.core.storage import Storage

        location = S3Uri.parse(uri)
        Storage().download(S3Uri(location.bucket, location.prefix), dest)
        return dest
    folder = Path(uri.removeprefix("file://"))
    if not folder.is_dir():
        raise ModelNotFound(f"model folder {uri} does not exist")
    return folder


def pick_device(device: Device) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelInvalid(f"{path.name} in the model folder is not JSON: {error}") from error
    return data if isinstance(data, dict) else {}


def _labels_from_id2label(id2label: Any) -> list[str]:
    if not isinstance(id2label, dict) or not id2label:
        return []
    ordered = sorted(((int(key), str(value)) for key, value in id2label.items()), key=lambda pair: pair[0])
    return [label for _, label in ordered]


def resolve_labels(model_dir: Path, base_dir: Path) -> list[str]:
    """The class labels, by index, of a sequence-classification model (see the module docstring)."""
    labels = _labels_from_id2label(_read_json(model_dir / "config.json").get("id2label"))
    if labels:
        return labels
    meta = _read_json(model_dir / "finetune_config.json")
    if isinstance(meta.get("labels"), list) and meta["labels"]:
        return [str(label) for label in meta["labels"]]
    if isinstance(meta.get("numLabels"), int) and meta["numLabels"] > 0:
        return [f"LABEL_{index}" for index in range(meta["numLabels"])]
    labels = _labels_from_id2label(_read_json(base_dir / "config.json").get("id2label"))
    if labels:
        return labels
    raise ModelInvalid(f"cannot tell the labels of the classifier in {model_dir}: no id2label, no labels")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def load(config: ServeConfig, work_dir: Path, device_choice: Device = "auto") -> LoadedModel:
    """Fetch and load the model serve.json names (blocking; minutes for large models)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    model_dir = fetch(config.model_uri, work_dir / "model")
    adapter = (model_dir / "adapter_config.json").is_file()
    base_dir = model_dir
    if adapter:
        if not config.base_model_uri:
            raise ConfigInvalid(f"{config.model_uri} holds an adapter: serve.json needs baseModelUri")
        base_dir = fetch(config.base_model_uri, work_dir / "base")
    trained_for = _read_json(model_dir / "finetune_config.json").get("task")
    if trained_for and trained_for != config.task:
        raise ModelInvalid(f"{config.model_uri} was trained for task {trained_for}, serve.json says {config.task}")
    if not (base_dir / "config.json").is_file():
        raise ModelInvalid(f"{base_dir} has no config.json: not a Hugging Face model folder")
    device = pick_device(device_choice)
    dtype = pick_dtype(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir if _has_tokenizer(model_dir) else base_dir)
        labels: list[str] = []
        if config.task == "sequence-classification":
            labels = resolve_labels(model_dir, base_dir)
            model = AutoModelForSequenceClassification.from_pretrained(
                base_dir,
                dtype=dtype,
                num_labels=len(labels),
                ignore_mismatched_sizes=True,
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelInvalid(f"cannot load the model from {config.model_uri}: {error}") from error
    model.to(device).eval()
    return _describe(model, tokenizer, config.task, device, labels)


def _describe(model: Any, tokenizer: Any, task: Task, device: torch.device, labels: list[str]) -> LoadedModel:
    """Gather pad/eos ids and the context length; make batched classification possible."""
    eos: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list):
            eos.update(int(item) for item in value)
    pad = getattr(model.config, "pad_token_id", None)  # a classifier pools at the last non-pad token
    if pad is None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = next(iter(sorted(eos)), None) if eos else tokenizer.unk_token_id
        if pad is None:
            pad = 0
        if tokenizer.pad_token is None and tokenizer.convert_ids_to_tokens(pad) is not None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad
    positions = getattr(model.config, "max_position_embeddings", None)
    context = min(int(positions or getattr(tokenizer, "model_max_length", 2048) or 2048), 1_000_000)
    log.info("model loaded: task=%s device=%s context=%d eos=%s labels=%s", task, device, context, sorted(eos), labels)
    return LoadedModel(model, tokenizer, task, device, context, frozenset(eos), int(pad), tuple(labels))


def from_folder(folder: Path, task: Task = "causal-lm", device: Device = "cpu") -> LoadedModel:
    """Load a local model folder directly (tests and the benchmark)."""
    config = ServeConfig(servedModelName="local", task=task, modelUri=str(folder))
    return load(config, folder, device)
