"""`baseModel.adapter`: start a run from a previous run's LoRA adapter (SFT, then DPO or SimPO on top of it).

Why merged and not stacked: the adapter is folded into the base model's weights once, before anything else
looks at the model, and the merged folder then IS the base model of the run (`inputs.prepare` hands it on as
`model_folder`). So everything downstream needs no second code path: the new LoRA adapter is applied to the
merged weights, and DPO's reference model (the new adapter disabled, or the precomputed log-probabilities of
full fine-tuning) is the SFT model, not the raw base; QLoRA quantizes the merged weights; `mergeWeights`
folds the new adapter into the merged weights again. Stacking two peft adapters would keep the first one's
matmuls in every forward pass and need both at serving time. Because the run's own adapter only fits the
merged weights, a run with `baseModel.adapter` publishes merged (or full) weights: `method.mergeWeights: true`
or `type: full` is required (the CRD and the config refuse anything else).

The check that the adapter belongs to the base model: an adapter folder the trainer wrote has a
`finetune_config.json` naming the `baseModelUri` it was trained on, which must be `baseModel.uri` (a trailing
slash aside); its task must be causal-lm and it must be an adapter (not merged or full weights, which are a
model of their own: name them in `baseModel.uri`). A folder written elsewhere has only peft's
`adapter_config.json`, whose `base_model_name_or_path` is whatever path or hub name it was trained from and
cannot be compared with an S3 URI: it is logged, and the merge itself refuses an adapter whose shapes do not
fit the base (`ModelInvalid`, naming `baseModel.adapter`). `check_metadata` runs in `Validating` (reading two
small files, no weights) and again before the merge.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core.errors import ModelInvalid, ModelNotFound, StorageNotFound
from finetune_trainer.core.fetch import download_model
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage
from finetune_trainer.training.modeling import WEIGHT_PATTERNS, check_model_folder

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
FINETUNE_CONFIG = "finetune_config.json"
MERGED_MARKER = "merged_adapter.json"
"""Written last into the merged folder: which adapter it holds, so a restarted attempt reuses it."""


def _folder(uri: str) -> S3Uri:
    return S3Uri.parse(uri if uri.endswith("/") else uri + "/")


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def check_metadata(adapter_config: dict[str, Any] | None, finetune: dict[str, Any] | None, cfg: TrainerConfig) -> None:
    """Refuse an adapter folder that is not a LoRA adapter of `baseModel.uri` (see the module docstring)."""
    uri = cfg.base_model.adapter
    if finetune is not None:
        trained_on = str(finetune.get("baseModelUri", ""))
        if not finetune.get("adapter", False):
            raise ModelInvalid(
                f"baseModel.adapter: {uri} holds merged or full weights (finetune_config.json adapter: false), "
                "not an adapter; name that folder in baseModel.uri instead"
            )
        if not _same_uri(trained_on, cfg.base_model.uri):
            raise ModelInvalid(
                f"baseModel.adapter: {uri} was trained on {trained_on} (its finetune_config.json), not on "
                f"baseModel.uri {cfg.base_model.uri}; set baseModel.uri to {trained_on}"
            )
        if finetune.get("task", "causal-lm") != "causal-lm":
            raise ModelInvalid(f"baseModel.adapter: {uri} is a {finetune.get('task')} adapter; causal-lm only")
    if adapter_config is None:
        raise ModelInvalid(f"baseModel.adapter: {uri} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    if str(adapter_config.get("peft_type", "LORA")).upper() != "LORA":
        raise ModelInvalid(f"baseModel.adapter: {uri} is a {adapter_config.get('peft_type')} adapter; LoRA only")
    if finetune is None:
        log.warning(
            "baseModel.adapter %s was not written by this trainer: its base (%s) cannot be compared with "
            "baseModel.uri %s; only its shapes are checked, by the merge",
            uri,
            adapter_config.get("base_model_name_or_path"),
            cfg.base_model.uri,
        )


def _read_json(storage: Storage, uri: S3Uri, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.read_bytes(uri.join(name)))
    except StorageNotFound:
        return None
    except ValueError as error:
        raise ModelInvalid(f"baseModel.adapter: {uri.join(name)} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ModelInvalid(f"baseModel.adapter: {uri.join(name)} is not a JSON object")
    return data


def check_remote(storage: Storage, cfg: TrainerConfig) -> None:
    """The `Validating` check: the adapter folder exists and belongs to the base model (no weights read)."""
    if cfg.base_model.adapter is None:
        return
    location = _folder(cfg.base_model.adapter)
    try:
        found = storage.list(location)
    except StorageNotFound as error:
        raise StorageNotFound(f"baseModel.adapter: {error}") from None
    if not found:
        raise ModelNotFound(f"baseModel.adapter: nothing found at {cfg.base_model.adapter}")
    check_metadata(_read_json(storage, location, ADAPTER_CONFIG), _read_json(storage, location, FINETUNE_CONFIG), cfg)


def _local_json(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise ModelInvalid(f"baseModel.adapter: {name} is not JSON: {error}") from None
    return data if isinstance(data, dict) else None


def merged_base(storage: Storage, cfg: TrainerConfig, base_folder: Path, work: Path) -> Path:
    """The base model with `baseModel.adapter` merged in, as a model folder (`base_folder` when there is none).

    The merge runs on the CPU in the base model's own dtype: one copy of the weights plus the adapter's."""
    uri = cfg.base_model.adapter
    if uri is None:
        return base_folder
    merged = work / "base-merged"
    marker = {"baseModelUri": cfg.base_model.uri, "adapter": uri}
    if (merged / MERGED_MARKER).is_file() and _local_json(merged, MERGED_MARKER) == marker:
        return merged  # this node merged it already (another rank, or an earlier attempt)
    adapter_folder = work / "base-adapter"
    shutil.rmtree(adapter_folder, ignore_errors=True)  # no file of another adapter may be read as this one's
    try:
        download_model(storage, _folder(uri), adapter_folder, require_manifest=False)
    except StorageNotFound as error:
        raise ModelNotFound(f"baseModel.adapter: {error}") from None
    check_metadata(_local_json(adapter_folder, ADAPTER_CONFIG), _local_json(adapter_folder, FINETUNE_CONFIG), cfg)
    if merged.exists():
        shutil.rmtree(merged)
    merged.mkdir(parents=True)
    _merge(base_folder, adapter_folder, merged, uri)
    for path in base_folder.iterdir():  # tokenizer, chat template, generation config: what the model lacks
        if path.is_file() and not (merged / path.name).exists() and not _is_weight(path):
            shutil.copy2(path, merged / path.name)
    check_model_folder(merged, uri)
    (merged / MERGED_MARKER).write_text(json.dumps(marker))
    log.info("baseModel.adapter %s merged into %s: the run starts from the merged weights", uri, cfg.base_model.uri)
    return merged


def _is_weight(path: Path) -> bool:
    return any(path.match(pattern) for pattern in WEIGHT_PATTERNS) or path.name.endswith(".index.json")


def _merge(base_folder: Path, adapter_folder: Path, out: Path, uri: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype="auto")
    try:
        with_adapter = PeftModel.from_pretrained(model, str(adapter_folder))
    except (RuntimeError, ValueError, KeyError, OSError) as error:  # shapes or modules that do not fit
        raise ModelInvalid(f"baseModel.adapter: {uri} does not fit baseModel.uri's model: {error}") from None
    with_adapter.merge_and_unload().save_pretrained(str(out))
