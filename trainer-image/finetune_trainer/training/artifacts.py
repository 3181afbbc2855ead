"""The run's outputs under `run-N/`: model folder, metrics.json, report.html and loss_curve.png.

Why this layout (docs/trainer-contract.md section 5): the operator's gate reads metrics.json and the
model server loads `run-N/model/`, which is self-describing: the adapter (or full / merged weights),
the tokenizer with the chat template used in training, and `finetune_config.json` (task, labels, base
model URI, resolved trainer config), so serving never has to guess how the model was trained.
The model folder is uploaded before metrics.json, so a reader that sees metrics.json sees the model; its
`_MANIFEST.json` (names, sizes, sha256: core/manifest.py) comes last, and the servers verify the folder by it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core.manifest import MANIFEST, FileEntry, render
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage, local_files
from finetune_trainer.evaluation.report import loss_curve_png, loss_history, render_html

log = logging.getLogger(__name__)


def finetune_config(
    cfg: TrainerConfig, labels: list[str] | None, merged: bool, default_template: bool
) -> dict[str, Any]:
    """What the server needs to rebuild the model: written as `model/finetune_config.json`."""
    return {
        "task": cfg.base_model.task,
        "baseModelUri": cfg.base_model.uri,
        "method": cfg.method.type,
        "merged": merged,
        "adapter": cfg.method.type != "full" and not merged,
        "labels": labels,
        "numLabels": len(labels) if labels else None,
        "schema": cfg.dataset.schema_,
        "maxSeqLength": cfg.dataset.max_seq_length,
        "defaultChatTemplate": default_template,
        "run": cfg.job.run,
        "trainerConfig": json.loads(cfg.to_json()),
    }


def save_model(
    model: Any,
    tokenizer: Any,
    cfg: TrainerConfig,
    labels: list[str] | None,
    folder: Path,
    base_folder: Path,
    default_template: bool,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write the trained model to `folder`: adapter, or merged / full weights, plus tokenizer and metadata.
    `state_dict`: the weights gathered from a sharded (FSDP) model, whose own parameters are shards."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    merge = cfg.method.type != "full" and cfg.method.merge_weights
    if merge:
        merged = merged_model(model, cfg, labels, base_folder, folder)
        merged.save_pretrained(str(folder))
    else:
        model.save_pretrained(str(folder), state_dict=state_dict)
    tokenizer.save_pretrained(str(folder))
    meta = finetune_config(cfg, labels, merge, default_template)
    (folder / "finetune_config.json").write_text(json.dumps(meta, indent=2))
    return folder


def merged_model(model: Any, cfg: TrainerConfig, labels: list[str] | None, base_folder: Path, scratch: Path) -> Any:
    """The adapter folded into the base weights. QLoRA's 4-bit base is reloaded in 16 bits first."""
    if cfg.method.type != "qlora":
        return model.merge_and_unload()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    adapter = scratch.parent / "adapter-for-merge"
    model.save_pretrained(str(adapter))
    if labels is not None:
        base = AutoModelForSequenceClassification.from_pretrained(
            str(base_folder),
            num_labels=len(labels),
            dtype=torch.bfloat16,
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.bfloat16)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def metrics_document(
    cfg: TrainerConfig,
    metrics: Mapping[str, Any],
    base: Mapping[str, Any],
    log_history: list[dict[str, Any]],
    facts: Mapping[str, Any],
) -> dict[str, Any]:
    """metrics.json: the termination message's metrics plus base-model metrics, facts and history."""
    from finetune_trainer.evaluation.metrics import gate_names

    return {
        "run": cfg.job.run,
        "metrics": dict(metrics),
        # the base model's under base_<split>_<metric> (base_test_rouge_l): for comparison, not gated
        "gateMetrics": {**gate_names(dict(metrics)), **{f"base_{k}": v for k, v in gate_names(dict(base)).items()}},
        "baseModel": dict(base),
        **facts,
        "history": log_history,
    }


def upload_model(storage: Storage, model_folder: Path, model_uri: S3Uri) -> None:
    """Upload the model folder, then its manifest (core/manifest.py): every file's name, size and sha256,
    written last, so a reader that finds the manifest finds the whole folder and can check each file.

    A manifest an earlier attempt left is deleted first: while the files are replaced, the folder has no manifest
    (the adapters sidecar refuses it, `fetch` checks nothing against an old one), so it is complete or unpublished,
    never a new file beside an old record."""
    files = [f for f in local_files(model_folder) if f.relative_to(model_folder).as_posix() != MANIFEST]
    storage.delete(model_uri.join(MANIFEST))
    entries = {}
    for path in files:
        name = path.relative_to(model_folder).as_posix()
        uploaded = storage.upload_file(path, model_uri.join(name))
        entries[name] = FileEntry(uploaded.size, uploaded.sha256)
    storage.write_bytes(model_uri.join(MANIFEST), render(entries), "application/json")
    log.info("uploaded the model (%d file(s) and %s) to %s", len(files), MANIFEST, model_uri)


def method_name(cfg: TrainerConfig) -> str:
    """The method as the report shows it: the type, and the objective when it is not sft."""
    method = cfg.method
    return method.type if method.objective == "sft" else f"{method.type}, objective {method.objective}"


def upload_outputs(
    storage: Storage,
    run_uri: S3Uri,
    model_folder: Path,
    cfg: TrainerConfig,
    metrics: Mapping[str, Any],
    base: Mapping[str, Any],
    log_history: list[dict[str, Any]],
    facts: Mapping[str, Any],
    copy: Callable[[str, bytes], None] | None = None,
) -> dict[str, str]:
    """Upload model, report and metrics; returns their URIs. `copy(name, data)` gets every file written beside
    the model too (the MLflow run's artifacts)."""

    def write(name: str, data: bytes, content_type: str) -> None:
        storage.write_bytes(run_uri.join(name), data, content_type)
        if copy is not None:
            copy(name, data)

    upload_model(storage, model_folder, run_uri.join("model/"))
    write("trainer_config.json", cfg.to_json().encode(), "application/json")
    title = f"{cfg.job.namespace}/{cfg.job.name} run {cfg.job.run}"
    curves = loss_history(log_history)
    last_step = int(facts.get("steps") or 0)
    for split in ("validation", "test"):  # the final evaluation, as one point at the last step
        if "loss" in metrics.get(split, {}) and not curves.get(split):
            curves[split] = [(last_step, float(metrics[split]["loss"]))]
    png = loss_curve_png(curves, title)
    write("loss_curve.png", png, "image/png")
    page = render_html(
        title,
        metrics,
        base,
        {"base model": cfg.base_model.uri, "method": method_name(cfg), "task": cfg.base_model.task, **facts},
        png,
    )
    write("report.html", page.encode(), "text/html; charset=utf-8")
    document = metrics_document(cfg, metrics, base, log_history, facts)
    write("metrics.json", json.dumps(document, indent=2, default=str).encode(), "application/json")
    uris = {
        "model": str(run_uri.join("model/")),
        "report": str(run_uri.join("report.html")),
        "metrics": str(run_uri.join("metrics.json")),
    }
    log.info("artifacts: %s", uris)
    return uris
