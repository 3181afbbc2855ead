"""The trainer config (`config.json`, docs/trainer-contract.md section 1) as typed, strict pydantic models.

Why strict: the config is the one interface between the operator and the trainer, and a typo in a field
name must fail loudly (`extra="forbid"`) instead of silently training with a default. Every problem is
reported at once with its field path (`hyperparameters.learningRate: ...`), so a user fixes the manifest
in one round trip. Field names are camelCase, mirroring the FineTuneJob spec, so the operator copies
sections through unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import regex
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_trainer.core import hub
from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.data import formats
from finetune_trainer.data.formats.base import generation_unsupported

Task = Literal["causal-lm", "sequence-classification"]
DataFormat = Literal["jsonl", "json", "csv", "parquet"]
DEFAULT_SEQUENCES_PER_PROCESS = 8
"""`batchSize: auto` without `effectiveBatchSize`: 8 sequences per process per optimizer step, what the default
batchSize 8 without accumulation gives."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


def _check_s3(uri: str) -> str:
    if not uri.startswith("s3://") or len(uri) <= len("s3://") or uri[len("s3://")] == "/":
        raise ValueError(f"must be an s3://bucket/key URI, got {uri!r}")
    return uri


def _check_optional_s3(uri: str | None) -> str | None:
    return None if uri is None else _check_s3(uri)


def _check_source(uri: str) -> str:
    """An input: an s3:// URI, or a Hugging Face Hub one (core/hub.py: resolved and copied by `validate`)."""
    if hub.is_hub_uri(uri):
        try:
            hub.parse(uri, "uri")
        except ConfigInvalid as error:
            raise ValueError(error.message.removeprefix("uri: ")) from None
        return uri
    return _check_s3(uri)


def _check_revision(uri: str, revision: str | None) -> None:
    if revision is not None and not hub.is_hub_uri(uri):
        raise ValueError(f"revision applies to hf:// URIs only ({uri!r} is read as it is)")


Revision = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s]+$")] | None


S3UriStr = Annotated[str, Field(min_length=6)]


class JobRef(_Model):
    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    uid: str = ""
    run: int = Field(ge=1)


class BaseModelSpec(_Model):
    uri: S3UriStr
    revision: Revision = None
    """hf:// only: a branch, tag or commit (default main); resolved to a commit by `validate`."""
    task: Task = "causal-lm"
    num_labels: int | None = Field(default=None, ge=2)
    labels: list[str] | None = None
    adapter: S3UriStr | None = None
    """A LoRA adapter folder of `uri`'s model (e.g. a previous run's `run-N/model/`), merged into its weights
    before training: the run starts from that model (training/base_adapter.py)."""

    _uri = field_validator("uri")(_check_source)
    _adapter = field_validator("adapter")(_check_optional_s3)

    @model_validator(mode="after")
    def _labels(self) -> BaseModelSpec:
        _check_revision(self.uri, self.revision)
        if self.labels is not None:
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must be unique")
            if self.num_labels is not None and self.num_labels != len(self.labels):
                raise ValueError(f"numLabels is {self.num_labels} but {len(self.labels)} labels are listed")
            if len(self.labels) < 2:
                raise ValueError("a classifier needs at least 2 labels")
        if self.task == "causal-lm" and (self.labels is not None or self.num_labels is not None):
            raise ValueError("numLabels/labels only apply to task sequence-classification")
        return self


class DataRef(_Model):
    uri: S3UriStr
    revision: Revision = None
    """hf:// only: a branch, tag or commit (default main); resolved to a commit by `validate`."""

    _uri = field_validator("uri")(_check_source)

    @model_validator(mode="after")
    def _revision(self) -> DataRef:
        _check_revision(self.uri, self.revision)
        return self


class SplitSpec(_Model):
    validation: float = Field(default=0.1, ge=0.0, lt=1.0)
    test: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 42


class DatasetSpec(_Model):
    train: DataRef
    validation: DataRef | None = None
    test: DataRef | None = None
    split: SplitSpec = SplitSpec()
    schema_: str | None = Field(default=None, alias="schema")
    """A name in `finetune_trainer.data.formats.FORMATS`; None: detected from the first records (formats.detect)."""
    columns: dict[str, str] = Field(default_factory=dict)
    max_seq_length: int = Field(default=2048, ge=8, le=1_048_576)
    format: DataFormat | None = None

    @field_validator("schema_")
    @classmethod
    def _known_schema(cls, value: str | None) -> str | None:
        if value is not None and value not in formats.FORMATS:
            raise ValueError(f"unknown schema {value!r} (known: {', '.join(formats.FORMATS)}; omit it to detect)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        fmt = formats.FORMATS[self.schema_] if self.schema_ else None
        problems = formats.unknown_columns(self.columns, fmt)
        taken = (0.0 if self.validation else self.split.validation) + (0.0 if self.test else self.split.test)
        if taken >= 1.0:
            problems.append(f"split: validation + test fractions taken from train sum to {taken:g}; must be below 1")
        if self.test is None and self.split.test <= 0.0:
            problems.append(
                "split.test: must be above 0 when no dataset.test is given "
                "(the job is evaluated on a held-out test split)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class LoraSpec(_Model):
    rank: int = Field(default=16, ge=1, le=4096)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"], min_length=1)


class DpoSpec(_Model):
    """Direct Preference Optimization (Rafailov et al. 2023): `beta` scales the implicit reward (how far the
    policy may move from the reference), `lossType` sigmoid is the paper's loss and ipo the squared loss of
    Azar et al. 2023 (IPO, which does not push the margin to infinity on deterministic preferences),
    `labelSmoothing` the conservative DPO of Mitchell 2023 (the labels are flipped with that probability;
    sigmoid only)."""

    beta: float = Field(default=0.1, gt=0.0, le=100.0)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)

    @model_validator(mode="after")
    def _smoothing(self) -> DpoSpec:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("labelSmoothing applies to lossType sigmoid only (IPO has no label noise model)")
        return self


class SimpoSpec(_Model):
    """SimPO (Meng et al. 2024), the reference-free preference objective: the reward of an answer is `beta` x its
    per-token average log-likelihood under the policy, and the loss asks the chosen answer's reward to beat the
    rejected one's by the margin `gamma`: -log sigmoid(beta x (mean_chosen - mean_rejected) - gamma). The names
    follow TRL's CPOTrainer with loss_type simpo (`beta`, `simpo_gamma`, `label_smoothing`); the defaults are
    the SimPO paper's (beta 2.0, gamma/beta 0.25, so gamma 0.5, TRL's default too). `labelSmoothing` is the same
    conservative loss as DPO's (the labels are flipped with that probability)."""

    beta: float = Field(default=2.0, gt=0.0, le=100.0)
    gamma: float = Field(default=0.5, ge=0.0, le=100.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)


class MethodSpec(_Model):
    type: Literal["lora", "qlora", "full"] = "lora"
    objective: Literal["sft", "dpo", "simpo"] = "sft"
    """sft: learn the answers of the data; dpo and simpo: learn to prefer the chosen answer of preference pairs
    (dpo against a reference model, simpo without one)."""
    dpo: DpoSpec | None = None
    """The DPO settings (defaults when left out with objective dpo)."""
    simpo: SimpoSpec | None = None
    """The SimPO settings (defaults when left out with objective simpo)."""
    lora: LoraSpec = LoraSpec()
    merge_weights: bool = False

    @model_validator(mode="after")
    def _merge(self) -> MethodSpec:
        if self.type == "full" and self.merge_weights:
            raise ValueError("mergeWeights applies to lora/qlora only (full fine-tuning has no adapter)")
        if self.dpo is not None and self.objective != "dpo":
            raise ValueError("dpo applies to objective dpo only (set method.objective: dpo, or leave method.dpo out)")
        if self.simpo is not None and self.objective != "simpo":
            raise ValueError(
                "simpo applies to objective simpo only (set method.objective: simpo, or leave method.simpo out)"
            )
        return self

    @property
    def pairs(self) -> bool:
        """The objective trains on preference pairs (dpo, simpo), not on single answers."""
        return self.objective != "sft"

    @property
    def preference_settings(self) -> DpoSpec | SimpoSpec:
        """The settings of the preference objective in effect (its defaults when the spec leaves them out)."""
        if self.objective == "simpo":
            return self.simpo or SimpoSpec()
        return self.dpo_settings

    @property
    def dpo_settings(self) -> DpoSpec:
        """The DPO settings in effect (the defaults when the spec leaves `dpo` out)."""
        return self.dpo or DpoSpec()


class Hyperparameters(_Model):
    epochs: float = Field(default=3, gt=0, le=1000)
    learning_rate: float = Field(default=2e-4, gt=0, le=1.0)
    batch_size: Annotated[int, Field(ge=1, le=65536)] | Literal["auto"] = 8
    """Sequences per process per forward pass (the micro-batch); `auto`: the largest that fits the device's
    memory (memory.plan.decide), with gradient accumulation making up `effectiveBatchSize`."""
    effective_batch_size: int | None = Field(default=None, ge=1, le=1_048_576)
    """Sequences per optimizer step over all processes (batchSize x gradientAccumulationSteps x processes).
    With batchSize auto: what the chosen micro-batch and accumulation make up (default 8 per process); with an
    integer batchSize: optional, and then it must equal that product."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096)
    gradient_checkpointing: bool | None = None
    """Recompute activations in backward (less memory, ~1/3 more compute); None: on only where the memory
    plan needs it to fit the device."""
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = "cosine"
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_steps: int | None = Field(default=None, ge=1)
    weight_decay: float = Field(default=0.0, ge=0.0)


class CheckpointSpec(_Model):
    interval_steps: int = Field(default=200, ge=1)
    keep: int = Field(default=2, ge=1)


class GateRule(_Model):
    """Read by the operator, not the trainer; accepted so the operator may copy `evaluation` through."""

    metric: str
    min: float | None = None
    max: float | None = None


class EarlyStoppingSpec(_Model):
    """Stop when `patience` validation evaluations in a row fail to beat the best by more than `minDelta`."""

    patience: int = Field(default=3, ge=1, le=10_000)
    min_delta: float = Field(default=0.0, ge=0.0)


class GenerationSpec(_Model):
    """Task metrics on the test split: generate answers to up to `maxSamples` test prompts (greedy) and
    score them against the references (finetune_trainer.evaluation.generation)."""

    max_samples: int = Field(default=100, ge=1, le=10_000)
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    regex: str | None = Field(default=None, min_length=1, max_length=1024)
    """`test_regex_match`: the fraction of answers the pattern matches in full."""
    json_valid: bool = False
    """`test_json_valid`: the fraction of answers that parse as JSON."""

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                regex.compile(value)  # the engine evaluation/generation.py matches with (a time limit per answer)
            except regex.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value


class EvaluationSpec(_Model):
    compare_base_model: bool = False
    gate: list[GateRule] = Field(default_factory=list)
    interval_steps: int | None = Field(default=None, ge=1)
    """Validation loss every N optimizer steps; the best checkpoint by it is tested and published."""
    early_stopping: EarlyStoppingSpec | None = None
    generation: GenerationSpec | None = None

    @model_validator(mode="after")
    def _early_stopping_needs_interval(self) -> EvaluationSpec:
        if self.early_stopping is not None and self.interval_steps is None:
            raise ValueError("earlyStopping needs intervalSteps (how often the validation loss is computed)")
        return self


class DistributedSpec(_Model):
    workers: int = Field(default=1, ge=1)
    processes_per_worker: int = Field(default=1, ge=1)
    sharding: Literal["none", "fsdp"] = "none"
    """fsdp: full fine-tuning with weights, gradients and optimizer states sharded over every process (FSDP2
    through the Trainer); checkpoints are sharded and resume on any number of processes."""


class MlflowTarget(_Model):
    """Where the run is tracked (docs/tracking.md). Credentials come from the environment (MLFLOW_TRACKING_*),
    never from this file: the operator renders it into a ConfigMap."""

    tracking_uri: str = Field(min_length=1, max_length=2048)
    experiment: str = Field(min_length=1, max_length=500)

    @field_validator("tracking_uri")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s):// URL of an MLflow tracking server, got {value!r}")
        return value


class Tracking(_Model):
    """Experiment tracking besides the TensorBoard event files every run writes (`run-N/tensorboard/`)."""

    mlflow: MlflowTarget | None = None


class OutputSpec(_Model):
    uri: S3UriStr
    run_uri: S3UriStr

    _uris = field_validator("uri", "run_uri")(_check_s3)

    @model_validator(mode="after")
    def _run_under_output(self) -> OutputSpec:
        if not self.run_uri.rstrip("/").startswith(self.uri.rstrip("/") + "/"):
            raise ValueError(f"runUri {self.run_uri!r} must lie under uri {self.uri!r}")
        return self


class TrainerConfig(_Model):
    api_version: Literal["finetune.dev/v1alpha1"] = "finetune.dev/v1alpha1"
    kind: Literal["TrainerConfig"] = "TrainerConfig"
    job: JobRef
    base_model: BaseModelSpec
    dataset: DatasetSpec
    method: MethodSpec = MethodSpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    checkpointing: CheckpointSpec = CheckpointSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    distributed: DistributedSpec = DistributedSpec()
    tracking: Tracking = Tracking()
    output: OutputSpec

    @model_validator(mode="after")
    def _task_matches_schema(self) -> TrainerConfig:
        schema = self.dataset.schema_
        if schema is not None and formats.FORMATS[schema].task != self.base_model.task:
            raise ValueError(
                f"dataset.schema {schema!r} does not fit baseModel.task "
                f"{self.base_model.task!r} (classification data needs task "
                "sequence-classification, and the other way round)"
            )
        mismatch = formats.objective_mismatch(formats.FORMATS[schema], self.method.objective) if schema else None
        if mismatch:
            raise ValueError(mismatch)
        if self.base_model.adapter is not None:
            if self.base_model.task != "causal-lm":
                raise ValueError("baseModel.adapter: applies to baseModel.task causal-lm only")
            if self.method.type != "full" and not self.method.merge_weights:
                raise ValueError(
                    "baseModel.adapter: the run trains on the base model with this adapter merged in, so its own "
                    "adapter fits only the merged weights: set method.mergeWeights: true (or method.type full) "
                    "to publish the merged model"
                )
        if self.method.pairs:
            objective = self.method.objective
            if self.base_model.task != "causal-lm":
                raise ValueError(f"method.objective {objective}: applies to baseModel.task causal-lm only")
            if self.distributed.sharding == "fsdp":
                raise ValueError(
                    f"method.objective {objective}: distributed.sharding fsdp is not supported yet with {objective}; "
                    "use sharding "
                    "none (lora adapters replicate; full fine-tuning of a model that fits one device)"
                )
        return self

    @model_validator(mode="after")
    def _evaluation_fits_data(self) -> TrainerConfig:
        evaluation, dataset, problems = self.evaluation, self.dataset, []
        if evaluation.interval_steps is not None and dataset.validation is None and dataset.split.validation <= 0:
            problems.append(
                "evaluation.intervalSteps: there is no validation split (dataset.validation is not set and "
                "dataset.split.validation is 0); give one, or leave intervalSteps out"
            )
        if evaluation.generation is not None:
            if self.base_model.task != "causal-lm":
                problems.append("evaluation.generation: applies to baseModel.task causal-lm only")
            elif dataset.schema_ is not None:
                reason = generation_unsupported(formats.FORMATS[dataset.schema_])
                if reason:
                    problems.append(f"evaluation.generation: {reason}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _batch_and_sharding(self) -> TrainerConfig:
        hp, world = self.hyperparameters, self.world_size
        problems = []
        if hp.batch_size == "auto":
            if hp.gradient_accumulation_steps != 1:
                problems.append(
                    "hyperparameters.gradientAccumulationSteps: with batchSize auto the accumulation is chosen "
                    "to fit; set effectiveBatchSize (sequences per optimizer step) instead"
                )
            if hp.effective_batch_size is not None and hp.effective_batch_size % world:
                problems.append(
                    f"hyperparameters.effectiveBatchSize: {hp.effective_batch_size} is not a multiple of the "
                    f"run's {world} processes"
                )
        elif hp.effective_batch_size is not None:
            product = hp.batch_size * hp.gradient_accumulation_steps * world
            if product != hp.effective_batch_size:
                problems.append(
                    f"hyperparameters.effectiveBatchSize: {hp.effective_batch_size} is not batchSize "
                    f"{hp.batch_size} x gradientAccumulationSteps {hp.gradient_accumulation_steps} x {world} "
                    f"processes = {product}; leave it out, or use batchSize auto"
                )
        if self.distributed.sharding == "fsdp" and self.method.type != "full":
            problems.append(
                f"distributed.sharding: fsdp shards full fine-tuning; method.type {self.method.type} trains an "
                "adapter, whose weights are small enough to replicate (use sharding none)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def world_size(self) -> int:
        """Training processes of the run (workers x processes per worker)."""
        return self.distributed.workers * self.distributed.processes_per_worker

    def sequences_per_process(self) -> int:
        """Sequences each process contributes to one optimizer step."""
        hp = self.hyperparameters
        if hp.batch_size != "auto":
            return hp.batch_size * hp.gradient_accumulation_steps
        return (hp.effective_batch_size or DEFAULT_SEQUENCES_PER_PROCESS * self.world_size) // self.world_size

    def with_batch(self, micro_batch: int, accumulation: int, checkpointing: bool) -> TrainerConfig:
        """This config with `batchSize: auto` and an unset `gradientCheckpointing` resolved, as trained, so the
        recorded config (and everything that reads the batch size) says what was used."""
        update = {
            "batch_size": micro_batch,
            "gradient_accumulation_steps": accumulation,
            "gradient_checkpointing": checkpointing,
            "effective_batch_size": micro_batch * accumulation * self.world_size,
        }
        return self.model_copy(update={"hyperparameters": self.hyperparameters.model_copy(update=update)})

    def with_schema(self, schema: str) -> TrainerConfig:
        """This config with `dataset.schema` resolved (detected), so the recorded config says what was used."""
        return self.model_copy(update={"dataset": self.dataset.model_copy(update={"schema_": schema})})

    def to_json(self) -> str:
        """The resolved config (defaults filled in), in the contract's camelCase, for artifacts."""
        return self.model_dump_json(by_alias=True, indent=2)


def format_errors(error: ValidationError) -> list[str]:
    """One `path: message` line per problem, paths in the contract's camelCase."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return lines


def parse_config(data: Any, source: str = "config") -> TrainerConfig:
    """Validate a decoded config document; raise ConfigInvalid listing every problem."""
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as error:
        lines = format_errors(error)
        raise ConfigInvalid(f"{source}: {len(lines)} error(s): " + "; ".join(lines)) from None


def load_config(path: Path) -> TrainerConfig:
    """Read and validate the config file the operator mounted."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigInvalid(f"cannot read the trainer config {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigInvalid(f"{path} line {error.lineno} column {error.colno}: invalid JSON: {error.msg}") from None
    return parse_config(data, str(path))
