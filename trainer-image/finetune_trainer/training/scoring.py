"""The run's evaluations: every split's metrics, the test prompts' answers and the validation-driven best model.

Why apart from `train`: these are what a run measures, not the order it runs in; `train.main` calls them before
training (the base model, kept beside the run so a resumed attempt reads them back), while training
(`selection_hooks`) and after it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core import distributed
from finetune_trainer.core.errors import StorageNotFound
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage
from finetune_trainer.data import formats
from finetune_trainer.evaluation import generation
from finetune_trainer.evaluation.metrics import evaluate
from finetune_trainer.training import preference, sharding
from finetune_trainer.training.best_model import SelectionHooks, SelectionStore
from finetune_trainer.training.callbacks import TrainerHooks
from finetune_trainer.training.inputs import Inputs

log = logging.getLogger(__name__)


def base_model_metrics(
    storage: Storage,
    run_uri: S3Uri,
    model: Any,
    inputs: Inputs,
    collator: Any,
    cfg: TrainerConfig,
    precision: str,
    resuming: bool,
) -> dict[str, dict[str, float]]:
    """The untrained model's metrics, computed before the first step and kept in `run-N/base_metrics.json`."""
    location = run_uri.join("base_metrics.json")
    if resuming:
        try:
            return dict(json.loads(storage.read_bytes(location)))
        except StorageNotFound:
            log.warning("no base_metrics.json from the earlier attempt; the base comparison is skipped")
            return {}
    metrics = evaluate_all(model, inputs, collator, cfg, precision)
    if cfg.method.pairs:
        metrics = preference.base_metrics(metrics)
    if distributed.is_main():
        storage.write_bytes(location, json.dumps(metrics).encode(), "application/json")
    return metrics


def evaluate_all(
    model: Any,
    inputs: Inputs,
    collator: Any,
    cfg: TrainerConfig,
    precision: str,
    splits: tuple[str, ...] = ("validation", "test"),
) -> dict[str, dict[str, float]]:
    num_labels = len(inputs.labels) if inputs.labels else None
    batch, lockstep = int(cfg.hyperparameters.batch_size), sharding.sharded(cfg)  # FSDP: every rank every batch
    if cfg.method.pairs:
        spec = cfg.method.preference_settings
        return {
            name: preference.evaluate_pairs(model, inputs.tokenized[name], collator, batch, precision, spec)
            for name in splits
            if name in inputs.tokenized
        }
    return {
        name: evaluate(model, inputs.tokenized[name], collator, batch, num_labels, precision, lockstep)
        for name in splits
        if name in inputs.tokenized
    }


def answers_of(
    model: Any,
    inputs: Inputs,
    cfg: TrainerConfig,
    precision: str,
    storage: Storage | None = None,
    run_uri: S3Uri | None = None,
    resuming: bool = False,
) -> generation.Generation | None:
    """`evaluation.generation`: the model's answers to the test prompts, scored (None when not configured).

    Rank 0 generates while the others wait; a sharded (FSDP) model needs every rank in every forward, so there
    every rank generates the same answers in lockstep. With `storage`, the answers are the base model's: kept in
    `run-N/base_generation.json`, so a resumed attempt (whose model is no longer the base) reads them back.
    """
    spec = cfg.evaluation.generation
    if spec is None:
        return None
    location = run_uri.join("base_generation.json") if run_uri is not None else None
    if resuming and storage is not None and location is not None:
        try:
            return generation.Generation.from_json(json.loads(storage.read_bytes(location)))
        except StorageNotFound:
            log.warning("no base_generation.json from the earlier attempt; the base model's answers are missing")
            return generation.Generation()
    result = generation.Generation()
    lockstep = distributed.world_size() > 1 and getattr(cfg.distributed, "sharding", "none") == "fsdp"
    if distributed.is_main() or lockstep:
        fmt = formats.FORMATS[inputs.report.schema]
        cases = generation.cases_from(inputs.test_examples, fmt, spec.max_samples)
        result = generation.run(
            model,
            inputs.tokenizer,
            cases,
            max_new_tokens=spec.max_new_tokens,
            regex=spec.regex,
            check_json=spec.json_valid,
            precision=precision,
            lockstep=lockstep,
        )
        if storage is not None and location is not None and distributed.is_main():
            storage.write_bytes(location, json.dumps(result.to_json()).encode(), "application/json")
    distributed.barrier()
    return result


def generation_table(
    inputs: Inputs, cfg: TrainerConfig, answers: generation.Generation, base: generation.Generation | None
) -> list[dict[str, str]]:
    """The report's rows: prompt, reference, the fine-tuned answer and the base model's (when compared)."""
    spec = cfg.evaluation.generation
    if spec is None:
        return []
    fmt = formats.FORMATS[inputs.report.schema]
    cases = generation.cases_from(inputs.test_examples, fmt, spec.max_samples).cases
    rows = []
    for index, (case, answer) in enumerate(zip(cases, answers.answers, strict=False)):
        row = {"prompt": case.shown(), "reference": case.reference, "answer": answer}
        if base is not None and index < len(base.answers):
            row["baseAnswer"] = base.answers[index]
        rows.append(row)
    return rows


def selection_hooks(
    trainer: Any,
    hooks: TrainerHooks,
    inputs: Inputs,
    collator: Any,
    cfg: TrainerConfig,
    precision: str,
    storage: Storage,
    run_uri: S3Uri,
    work: Path,
    reporter: Any,
) -> SelectionHooks | None:
    """`evaluation.intervalSteps`: validation (validation split only) while training, the best model kept."""
    if cfg.evaluation.interval_steps is None:
        return None

    def validation_loss(model: Any) -> float:
        return float(evaluate_all(model, inputs, collator, cfg, precision, ("validation",))["validation"]["loss"])

    return SelectionHooks(
        spec=cfg.evaluation,
        store=SelectionStore(storage, run_uri),
        reporter=reporter,
        validation_loss=validation_loss,
        stopping=lambda: hooks.stopped_at is not None,
        work=work,
    ).attach(trainer)
