"""`python -m finetune_trainer validate`: every check on the inputs that training would make, without a GPU.

Why: a job that would fail on its data should fail before it waits in a GPU queue and loads weights. This
runs the trainer's own code on the same config.json (reading, format detection, split, leakage checks,
tokenization with the base model's tokenizer and chat template; `inputs.read_data` and
`inputs.tokenize_data`), downloads only the model's config and tokenizer files (never its weights), and
prints a JSON summary: records and tokens per split, where each split came from and how it was sized,
records cut at maxSeqLength, held-out records also in train (exact and near copies), the estimated
optimizer steps and the schema (and why). User errors exit 42 with the same codes and messages as `train`
(docs/trainer-contract.md section 7).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage
from finetune_trainer.core.termination import LIMIT
from finetune_trainer.memory.check import Placement, check_fit
from finetune_trainer.memory.disk import DiskPlan, check_request, disk_plan
from finetune_trainer.memory.plan import MemoryPlan
from finetune_trainer.training import base_adapter, hub_sources
from finetune_trainer.training.checkpoints import refuse_foreign_run
from finetune_trainer.training.inputs import (
    CHAT_KINDS,
    fetch_tokenizer,
    read_data,
    sequence_limit,
    tokenize_data,
)

log = logging.getLogger(__name__)


def summarize(cfg: TrainerConfig, storage: Storage, work: Path, placement: Placement | None = None) -> dict[str, Any]:
    """The validation summary of one config; raises the contract's user errors like `train` would, and
    PlanDoesNotFit when the run's memory plan cannot fit where `placement` puts it (`memory.check.check_fit`)."""
    from finetune_trainer.data.chat_template import ensure_chat_template
    from finetune_trainer.training.modeling import load_tokenizer
    from finetune_trainer.training.train import total_steps

    hub_cfg = cfg
    disk_limit = (placement or Placement()).disk_limit
    # hf:// sources: resolved, checked against the disk (before any download), data and model config copied
    prepared = hub_sources.prepare(cfg, storage, work, disk_limit=disk_limit)
    cfg = prepared.cfg
    d = read_data(storage, cfg, work / "data")
    refuse_foreign_run(storage, S3Uri.parse(cfg.output.run_uri), cfg.job)
    folder = fetch_tokenizer(storage, cfg.base_model.uri, work / "tokenizer")
    base_adapter.check_remote(storage, cfg)  # the adapter belongs to the base model (no weights read)
    tokenizer = load_tokenizer(folder, cfg.base_model.uri)
    if d.format.kind in CHAT_KINDS:
        ensure_chat_template(tokenizer)
    max_length = sequence_limit(folder, cfg.dataset.max_seq_length)
    tokenized = tokenize_data(d, tokenizer, max_length, None)
    world = cfg.distributed.workers * cfg.distributed.processes_per_worker
    longest = max((len(ids) for ids in tokenized["train"]["input_ids"]), default=1) if "train" in tokenized else 1
    memory = check_fit(cfg, folder, longest, d.labels, placement or Placement())
    hub_sources.finish(prepared, storage, hub_cfg, work)  # the weights, once the memory plan fits
    disk = _disk_plan(cfg, storage, work / "data", memory)
    # s3:// inputs: the same refusal, from their listing (nothing of the model's weights was downloaded here)
    check_request([("baseModel.uri", disk.model_bytes), ("dataset", disk.data_bytes)], disk_limit)
    report = d.report.to_json()
    return {
        "schema": report["schema"],
        "schemaDetected": report["schemaDetected"],
        "schemaReason": report["schemaReason"],
        "records": report["records"],
        "tokens": {name: stats["tokens"] for name, stats in report["tokens"].items()},
        "truncated": {name: stats["truncated"] for name, stats in report["tokens"].items()},
        "droppedNoTarget": {name: stats["dropped"] for name, stats in report["tokens"].items()},
        "maxSeqLength": max_length,
        "overlapWithTrain": report["overlapWithTrain"],
        "nearOverlapWithTrain": report["nearOverlapWithTrain"],
        "nearOverlapExamples": report["nearOverlapExamples"],
        "splitSources": report["splitSources"],
        "splitRule": report["splitRule"],
        "excludedFromTrain": report["excludedFromTrain"],
        "ignoredColumns": report["ignoredColumns"],
        "labels": d.labels,
        "estimatedSteps": total_steps(len(tokenized["train"]), cfg, world),
        "files": report["files"],
        "memoryPlan": memory.to_status() if memory else None,
        "diskPlan": disk.to_status(),
        **({"sources": [source.to_json() for source in prepared.sources]} if prepared.sources else {}),
    }


def _disk_plan(cfg: TrainerConfig, storage: Storage, data_folder: Path, memory: MemoryPlan | None) -> DiskPlan:
    """The training pod's local disk (memory.disk): the base model's objects as listed, the data as fetched here,
    and the parameter counts of the memory plan when there is one."""
    model_bytes = sum(o.size for o in storage.list(S3Uri.parse(cfg.base_model.uri)))
    data_bytes = sum(p.stat().st_size for p in data_folder.rglob("*") if p.is_file())
    return disk_plan(
        model_bytes=model_bytes,
        data_bytes=data_bytes,
        method=cfg.method.type,
        parameters=memory.parameters if memory else None,
        trainable_parameters=memory.trainable_parameters if memory else None,
    )


def success_line(summary: dict[str, Any], run: int | None) -> str:
    """The termination message of a successful validation: the summary, without file lists if too long."""
    records = summary["records"]
    message = (
        f"validated: schema {summary['schema']}, train {records['train']} / validation {records['validation']} / "
        f"test {records['test']} records, about {summary['estimatedSteps']} steps"
    )
    body: dict[str, Any] = {"code": "Succeeded", "message": message, "summary": summary}
    if run is not None:
        body["run"] = run
    line = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    if len(line.encode()) > LIMIT:
        dropped = ("files", "excludedFromTrain", "labels", "nearOverlapExamples")  # never sources: the commits
        body["summary"] = {k: v for k, v in summary.items() if k not in dropped}
        line = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    if len(line.encode()) > LIMIT:
        del body["summary"]
        line = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return line
