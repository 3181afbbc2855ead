"""`main(cfg)`: one training run from inputs to artifacts, the way the contract describes it.

Why this shape: the entry point (`cli`) only parses arguments and maps outcomes to exit codes; this
module strings the steps together and holds no policy of its own, one function per stage: inputs (`inputs`),
model and method (`modeling`), the Trainer with our hooks (`callbacks`, `checkpoints`, `progress`), evaluation
(`scoring`) and outputs (`artifacts`). Causal LM batches are flattened (`DataCollatorWithFlattening`:
one row, position ids restart per example), so no compute is spent on padding; classifier batches are
length-grouped and padded per batch. Checkpoints upload on rank 0's thread (`uploader`) while training and
evaluation go on; every way out of training waits for the queued uploads first, so a run never uploads
its model, or exits 75, before its last checkpoint is resumable.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.core import distributed
from finetune_trainer.core.errors import Preempted
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage
from finetune_trainer.evaluation import generation
from finetune_trainer.training import compiling, hub_sources, preference, sharding
from finetune_trainer.training.artifacts import save_model, upload_outputs
from finetune_trainer.training.best_model import SelectionHooks
from finetune_trainer.training.callbacks import SignalStop, TrainerHooks
from finetune_trainer.training.checkpoints import CheckpointStore, refuse_foreign_run
from finetune_trainer.training.inputs import Inputs, prepare, write_split
from finetune_trainer.training.loss import with_label_position_loss
from finetune_trainer.training.modeling import Hardware, apply_method, check_method, choose_precision, load_model
from finetune_trainer.training.progress import make_reporter
from finetune_trainer.training.scoring import (
    answers_of,
    base_model_metrics,
    evaluate_all,
    generation_table,
    selection_hooks,
)
from finetune_trainer.training.selection import PROGRESS_FIELDS, SelectionState
from finetune_trainer.training.tracking import RunTracking, memory_plan_here, tracking_finished_on_error
from finetune_trainer.training.uploader import CheckpointUploader, uploads_finished_on_error

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    steps: int
    metrics: dict[str, dict[str, float]]
    base_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)


def work_dir() -> Path:
    """`FTO_WORK_DIR` (the pod's emptyDir), else a fresh temporary folder."""
    configured = os.environ.get("FTO_WORK_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.mkdtemp(prefix="fto-work-"))


def total_steps(examples: int, cfg: TrainerConfig, world: int) -> int:
    """Optimizer steps the run will take (as the Trainer computes them), for logging cadence."""
    hp = cfg.hyperparameters
    if hp.max_steps:
        return hp.max_steps
    batch = cfg.sequences_per_process() if hp.batch_size == "auto" else hp.batch_size  # auto: before it is chosen
    batches = math.ceil(examples / (batch * world))
    per_epoch = max(1, batches // hp.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * hp.epochs))


def collator_for(cfg: TrainerConfig, tokenizer: Any) -> Any:
    if cfg.method.pairs:
        return preference.PairCollator()
    if cfg.base_model.task == "sequence-classification":
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True)  # type: ignore[no-untyped-call]


def trainer_class(cfg: TrainerConfig) -> type[Any]:
    """The Trainer class a run uses: DPO and SimPO run the preference objective (`preference`); other causal LMs (not
    sharded) compute their loss at label positions only, without the full logits (`loss`); classifiers and
    FSDP runs keep the Trainer's own loss."""
    base = sharding.trainer_class(cfg)
    if cfg.method.pairs:  # its own loss over chosen/rejected pairs (`preference`)
        return preference.trainer_class(base, cfg.method.preference_settings)
    if cfg.base_model.task == "sequence-classification" or sharding.sharded(cfg):
        return base
    return with_label_position_loss(base)


def training_arguments(cfg: TrainerConfig, precision: str, hardware: Hardware, output: Path, steps: int) -> Any:
    from transformers import TrainingArguments

    hp = cfg.hyperparameters
    classifier = cfg.base_model.task == "sequence-classification"  # padded batches; causal LM: flattened
    return TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=int(hp.batch_size),  # resolved (memory.check.decide_for_device): never "auto" here
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        warmup_steps=math.ceil(hp.warmup_ratio * steps),
        lr_scheduler_type=hp.lr_scheduler,
        weight_decay=hp.weight_decay,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not hardware.cuda,
        save_strategy="steps",
        save_steps=cfg.checkpointing.interval_steps,
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=max(1, steps // 100),
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if classifier else "random",
        include_num_input_tokens_seen="non_padding" if classifier else "all",
        ddp_find_unused_parameters=False,
        ddp_backend="gloo" if distributed.world_size() > 1 and not hardware.cuda else None,
        **sharding.training_arguments(cfg),  # gradient checkpointing, FSDP
    )


def decide_for_device(cfg: TrainerConfig, inputs: Inputs, hardware: Hardware) -> TrainerConfig:
    """`batchSize: auto` and an unset `gradientCheckpointing` decided by the memory plan on this device."""
    from finetune_trainer.memory.check import decide_for_device, runtime_device

    longest = max((len(ids) for ids in inputs.tokenized["train"]["input_ids"]), default=1)
    device = runtime_device(hardware.cuda, cfg.distributed.processes_per_worker, dict(os.environ))
    return decide_for_device(cfg, inputs.model_folder, longest, inputs.labels, device)


def quiet_progress_bars() -> None:
    """Progress bars are for terminals; a pod log gets our own progress lines instead."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def checkpoint_uploader(run_uri: S3Uri, cfg: TrainerConfig, work: Path, tracking: RunTracking) -> CheckpointUploader:
    """Rank 0's upload thread, with a storage client of its own (the training thread keeps its own). The
    TensorBoard event files so far go up after each checkpoint."""
    store = CheckpointStore(Storage(), run_uri, cfg.checkpointing.keep)
    resolved = cfg.to_json()
    staging = work / "checkpoint-uploads"  # beside, not inside, the Trainer's output dir: never rotated

    def upload(folder: Path, step: int) -> None:
        store.upload(folder, step, resolved)
        tracking.upload_tensorboard()

    return CheckpointUploader(upload, staging)


def load_inputs(
    cfg: TrainerConfig, storage: Storage, run_uri: S3Uri, work: Path, store: CheckpointStore, hardware: Hardware
) -> tuple[TrainerConfig, Inputs, Path | None]:
    """Stage 1: data, tokenizer and base model fetched, the run folder checked as ours, the latest checkpoint
    fetched, and the config completed for this device and written beside the run."""
    with distributed.local_main_first():  # the others find the node's copies and download nothing again
        inputs = prepare(storage, cfg, work)
        refuse_foreign_run(storage, run_uri, cfg.job)  # before anything is resumed from or written to it
        resume = store.fetch_latest(work / "resume")
    cfg = cfg.with_schema(inputs.report.schema)  # a detected schema is recorded as if it had been set
    cfg = decide_for_device(cfg, inputs, hardware)  # batchSize auto, gradientCheckpointing unset: recorded as chosen
    if distributed.is_main():
        write_split(storage, run_uri, inputs.splits, inputs.report)
        storage.write_bytes(run_uri.join("trainer_config.json"), cfg.to_json().encode(), "application/json")
    return cfg, inputs, resume


def start_tracking(
    cfg: TrainerConfig, storage: Storage, run_uri: S3Uri, work: Path, reporter: Any
) -> RunTracking | None:
    """Rank 0's MLflow/TensorBoard tracking, started (None on the other ranks)."""
    tracking = RunTracking(cfg, storage, run_uri, work) if distributed.is_main() else None
    if tracking is not None:
        tracking.start()  # the same MLflow run as an earlier attempt of this run
        reporter.tracking = tracking.summary
    return tracking


def build_model(
    cfg: TrainerConfig,
    inputs: Inputs,
    hardware: Hardware,
    precision: str,
    storage: Storage,
    run_uri: S3Uri,
    resume: Path | None,
) -> tuple[Inputs, Any, Any, dict[str, dict[str, float]], generation.Generation | None]:
    """Stage 2: the model with its method applied, on its device, its collator, and the base model's metrics and
    answers when `compareBaseModel` asks for them; the inputs gain the reference log-probabilities where full
    fine-tuning with dpo precomputes them (`preference.with_reference`)."""
    import torch
    from transformers import set_seed

    set_seed(cfg.hyperparameters.seed)
    model = apply_method(load_model(cfg, inputs.model_folder, inputs.labels, precision), cfg)
    if hardware.cuda and cfg.method.type != "qlora":  # a 4-bit model is placed at load time
        model = model.to(torch.device("cuda", distributed.local_rank()))
    collator = collator_for(cfg, inputs.tokenizer)
    if cfg.method.objective == "dpo" and cfg.method.type == "full":  # the untrained model is the reference
        batch = int(cfg.hyperparameters.batch_size)
        tokenized = preference.with_reference(model, inputs.tokenized, collator, batch, precision)
        inputs = replace(inputs, tokenized=tokenized)
    base: dict[str, dict[str, float]] = {}
    base_answers: generation.Generation | None = None
    if cfg.evaluation.compare_base_model:  # still "loading": "evaluating" would read as training done
        base = base_model_metrics(storage, run_uri, model, inputs, collator, cfg, precision, resume is not None)
        base_answers = answers_of(model, inputs, cfg, precision, storage, run_uri, resume is not None)
        if base_answers is not None:
            base.setdefault("test", {}).update(base_answers.scores)
    return inputs, model, collator, base, base_answers


def make_trainer(
    cfg: TrainerConfig,
    model: Any,
    collator: Any,
    inputs: Inputs,
    hardware: Hardware,
    precision: str,
    storage: Storage,
    run_uri: S3Uri,
    work: Path,
    reporter: Any,
    stop: SignalStop,
    store: CheckpointStore,
    tracking: RunTracking | None,
) -> tuple[Any, TrainerHooks, CheckpointUploader | None, SelectionHooks | None]:
    """Stage 3: the Trainer with our hooks (stop, checkpoints, progress, tracking, best-model selection)."""
    steps = total_steps(len(inputs.tokenized["train"]), cfg, distributed.world_size())
    args = training_arguments(cfg, precision, hardware, work / "checkpoints", steps)
    uploader = checkpoint_uploader(run_uri, cfg, work, tracking) if tracking is not None else None
    hooks = TrainerHooks(stop, store, uploader, reporter)
    if tracking is not None:
        resolved = {"precision": precision, "processes": distributed.world_size(), "totalSteps": steps}
        plan = memory_plan_here(cfg, inputs.model_folder, inputs.tokenized["train"], inputs.labels, hardware.cuda)
        tracking.log_start(resolved, plan)
    trainer = trainer_class(cfg)(
        model=model,
        args=args,
        train_dataset=inputs.tokenized["train"],
        data_collator=collator,
        callbacks=[hooks, *(tracking.callbacks() if tracking is not None else [])],
    )
    selection = selection_hooks(trainer, hooks, inputs, collator, cfg, precision, storage, run_uri, work, reporter)
    return trainer, hooks, uploader, selection


def compile_for_training(trainer: Any, cfg: TrainerConfig, hardware: Hardware, dataset: Any, collator: Any) -> bool:
    """`torch.compile` of the decoder layers where `compiling.decide` says so (`FTO_TORCH_COMPILE` overrides),
    logged with its reason. The compile is paid, and any error shows, in a probe step on the first two
    training records (its gradients dropped, the RNG restored so the run trains as it would have); on an
    error the layers go back to eager and the run goes on, with the error named in the log."""
    import torch

    steps = total_steps(len(dataset), cfg, distributed.world_size())
    on, why = compiling.decide(
        compiling.setting(os.environ),
        cuda=hardware.cuda,
        causal_lm=cfg.base_model.task != "sequence-classification",
        method=cfg.method.type,
        objective=cfg.method.objective,
        sharded=sharding.sharded(cfg),
        checkpointing=bool(cfg.hyperparameters.gradient_checkpointing),  # resolved by now (decide_for_device)
        layers=len(compiling.decoder_layers(trainer.model)),
        steps=steps,
    )
    log.info("torch.compile of the decoder layers: %s (%s)", "on" if on else "off", why)
    if not on:
        return False
    compiling.compile_layers(trainer.model, dynamic=True)
    device = next(trainer.model.parameters()).device
    batch = {k: v.to(device) for k, v in collator([dataset[i] for i in range(min(2, len(dataset)))]).items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if hardware.cuda else None

    def step() -> None:
        with trainer.autocast_smart_context_manager():
            value = trainer.compute_loss(trainer.model, batch)
        value.backward()

    started = time.monotonic()
    error = compiling.probe(trainer.model, step)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    if error is None:
        log.info("torch.compile: the probe step compiled and ran in %.1f s", time.monotonic() - started)
    return error is None


def train(
    trainer: Any, hooks: TrainerHooks, stop: SignalStop, uploader: CheckpointUploader | None, resume: Path | None
) -> tuple[Any, float, float | None]:
    """Stage 4: the training itself; SIGTERM ends it as Preempted once the saved checkpoint is uploaded."""
    started = time.monotonic()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:  # evaluation and generation run eager (no_grad and a KV cache would each compile anew)
        compiling.uncompile(trainer.model)
    if stop.requested:
        step = hooks.stopped_at if hooks.stopped_at is not None else trainer.state.global_step
        if uploader is not None:
            uploader.finish()  # the upload in flight, then the checkpoint saved on SIGTERM
        distributed.barrier()  # no rank exits first: torchrun would stop rank 0 mid-upload
        raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint-{step} saved, the next attempt resumes")
    runtime = time.monotonic() - started
    tokens_per_second, _ = hooks.rates(trainer.state)
    return result, runtime, tokens_per_second


def evaluate_trained(
    trainer: Any, selection: SelectionHooks | None, inputs: Inputs, collator: Any, cfg: TrainerConfig, precision: str
) -> tuple[SelectionState | None, Any, dict[str, dict[str, float]], generation.Generation | None]:
    """Stage 5: the best (else the last) model's metrics and answers."""
    chosen = selection.restore_best(trainer) if selection is not None else None  # the best, not the last
    model = trainer.model
    metrics = evaluate_all(model, inputs, collator, cfg, precision)  # the last checkpoint uploads meanwhile
    answers = answers_of(model, inputs, cfg, precision)
    if answers is not None:
        metrics.setdefault("test", {}).update(answers.scores)
    log.info("metrics: %s", metrics)
    return chosen, model, metrics, answers


# long only by its parameter list (one per line): every value the run produced so far goes into its outputs
def publish(
    trainer: Any,
    model: Any,
    inputs: Inputs,
    cfg: TrainerConfig,
    precision: str,
    storage: Storage,
    run_uri: S3Uri,
    work: Path,
    uploader: CheckpointUploader | None,
    tracking: RunTracking | None,
    metrics: dict[str, dict[str, float]],
    base: dict[str, dict[str, float]],
    step: int,
    result: Any,
    runtime: float,
    tokens_per_second: float | None,
    chosen: SelectionState | None,
    answers: generation.Generation | None,
    base_answers: generation.Generation | None,
) -> dict[str, str]:
    """Stage 6: the final checkpoint resumable first, then the model, metrics and report uploaded (rank 0)."""
    artifacts: dict[str, str] = {}
    if uploader is not None:
        uploader.finish()  # the final checkpoint is resumable before any artifact of the run exists
    if tracking is not None:
        tracking.log_end(metrics, base, step)
    weights = sharding.full_state_dict(trainer)  # FSDP: the shards gathered, a collective of every rank
    if distributed.is_main():
        folder = save_model(
            model,
            inputs.tokenizer,
            cfg,
            inputs.labels,
            work / "model",
            inputs.model_folder,
            inputs.default_template,
            state_dict=weights,
        )
        facts: dict[str, Any] = {
            "steps": trainer.state.global_step,
            "epochs": round(float(trainer.state.epoch or 0), 3),
            "trainRuntimeSeconds": round(runtime, 1),
            "tokensPerSecond": round(tokens_per_second, 1) if tokens_per_second else None,
            "trainLoss": round(float(result.training_loss), 6),
            "precision": precision,
            "processes": distributed.world_size(),
            "labels": inputs.labels,
            "dataset": inputs.report.to_json(),
        }
        if chosen is not None:
            facts.update(chosen.facts(trainer.state.global_step))
        if answers is not None:
            facts["generation"] = generation_table(inputs, cfg, answers, base_answers)
        if tracking is not None and tracking.mlflow is not None and tracking.mlflow.url:
            facts["mlflowRun"] = tracking.mlflow.url
        history = trainer.state.log_history
        copy = tracking.log_artifact if tracking is not None else None
        artifacts = upload_outputs(storage, run_uri, folder, cfg, metrics, base, history, facts, copy)
    if tracking is not None:
        tracking.finish("FINISHED")
    distributed.barrier()
    return artifacts


def main(cfg: TrainerConfig, stop: SignalStop | None = None) -> Outcome:
    """Train, evaluate and upload one run; raises TrainerError subclasses for the contract's outcomes."""
    stop = stop or SignalStop()
    quiet_progress_bars()
    hardware = Hardware.detect()
    check_method(cfg, hardware)
    precision = choose_precision(cfg.hyperparameters.precision, hardware)
    distributed.init()
    storage = Storage()
    run_uri = S3Uri.parse(cfg.output.run_uri)
    work = work_dir()
    reporter = make_reporter(cfg.job.run, cfg.job.namespace, enabled=distributed.is_main())
    reporter.extra = dict.fromkeys(PROGRESS_FIELDS)  # null: nothing an earlier run reported lingers
    reporter.report("loading", force=True)
    reporter.extra = {}
    store = CheckpointStore(storage, run_uri, cfg.checkpointing.keep)
    cfg = hub_sources.cached(cfg, storage)  # hf:// sources: their cached copy at the recorded commit, no hub

    cfg, inputs, resume = load_inputs(cfg, storage, run_uri, work, store, hardware)
    tracking = start_tracking(cfg, storage, run_uri, work, reporter)
    built = build_model(cfg, inputs, hardware, precision, storage, run_uri, resume)
    inputs, model, collator, base, base_answers = built
    trainer, hooks, uploader, selection = make_trainer(
        cfg, model, collator, inputs, hardware, precision, storage, run_uri, work, reporter, stop, store, tracking
    )
    # a crash or a late SIGTERM still finishes the uploads, and ends the MLflow run as failed or killed
    with uploads_finished_on_error(uploader), tracking_finished_on_error(tracking):
        compile_for_training(trainer, cfg, hardware, inputs.tokenized["train"], collator)
        result, runtime, tokens_per_second = train(trainer, hooks, stop, uploader, resume)

        step, total = trainer.state.global_step, trainer.state.max_steps
        reporter.report("evaluating", force=True, step=step, total=total)
        chosen, model, metrics, answers = evaluate_trained(trainer, selection, inputs, collator, cfg, precision)

        reporter.report("uploading", force=True, step=step, total=total)
        artifacts = publish(
            trainer, model, inputs, cfg, precision, storage, run_uri, work, uploader, tracking, metrics, base, step,
            result, runtime, tokens_per_second, chosen, answers, base_answers,
        )  # fmt: skip
    summary = tracking.summary() if tracking is not None else {}
    return Outcome(trainer.state.global_step, metrics, base, artifacts, summary)
