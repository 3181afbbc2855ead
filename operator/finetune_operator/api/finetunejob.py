"""The typed FineTuneJob spec: parsed once from the object body, then handed to pure builders.

Why a model of our own when the CRD already validates: builders and the planner should read
`spec.resources.gpus`, not `body["spec"].get("resources", {}).get("gpus", 1)`. The defaults repeat the
CRD's, so an object created before a default was added still parses. Unknown fields are rejected, which
keeps this model and `crds/finetunejob.yaml` in step (a unit test compares them field by field).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from finetune_operator.api.base import SpecModel
from finetune_operator.api.hashing import content_hash
from finetune_operator.api.uris import SafeUri

Quantity = int | str
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
"""`resources.maxDuration`: hours, minutes, seconds in that order, e.g. 90m, 24h, 1h30m (the CRD's pattern)."""


def duration_seconds(text: str) -> int:
    """Seconds of a `DURATION_PATTERN` duration (ValueError when it is not one, or is zero)."""
    match = re.fullmatch(DURATION_PATTERN, text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration like 90m, 24h or 1h30m")
    seconds = sum(int(part[:-1]) * {"h": 3600, "m": 60, "s": 1}[part[-1]] for part in match.groups() if part)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


class TokenSecret(SpecModel):
    """A Secret key holding a Hugging Face Hub token: given to the Validating pod only, as an env var."""

    name: str
    key: str = "token"


class HubSource(SpecModel):
    """A source's URI, and for hf:// ones their revision and token (the CRD refuses both on s3:// URIs)."""

    uri: SafeUri
    revision: str | None = None
    """Branch, tag or commit; resolved to a commit by the run's Validating step (status.validation.sources)."""
    token_secret: TokenSecret | None = None

    @property
    def from_hub(self) -> bool:
        return self.uri.startswith("hf://")

    @model_validator(mode="after")
    def _hub_fields(self) -> HubSource:
        if not self.from_hub and (self.revision is not None or self.token_secret is not None):
            raise ValueError("revision and tokenSecret apply to hf:// URIs only")
        return self


class BaseModelSpec(HubSource):
    task: Literal["causal-lm", "sequence-classification"] = "causal-lm"
    num_labels: int | None = None
    labels: list[str] | None = None
    adapter: SafeUri | None = None
    """A LoRA adapter folder of `uri`'s model (a previous run's `run-N/model/`), merged in before training."""


class DataRef(HubSource):
    pass


class SplitSpec(SpecModel):
    validation: float = 0.1
    test: float = 0.1
    seed: int = 42


Schema = Literal[
    "alpaca", "chat", "classification", "openai-preference", "preference", "prompt-completion", "sharegpt", "text"
]


class DatasetSpec(SpecModel):
    train: DataRef
    validation: DataRef | None = None
    test: DataRef | None = None
    split: SplitSpec = SplitSpec()
    schema_: Schema | None = Field(default=None, alias="schema")
    """None: the trainer detects it from the data (the CRD enum; tests check it equals the trainer's formats)."""
    columns: dict[str, str] = {}
    max_seq_length: int = 2048
    format: Literal["jsonl", "json", "csv", "parquet"] | None = None


class LoraSpec(SpecModel):
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = ["all-linear"]


class DpoSpec(SpecModel):
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0


class SimpoSpec(SpecModel):
    beta: float = 2.0
    gamma: float = 0.5
    label_smoothing: float = 0.0


class MethodSpec(SpecModel):
    type: Literal["lora", "qlora", "full"] = "lora"
    objective: Literal["sft", "dpo", "simpo"] = "sft"
    dpo: DpoSpec | None = None
    simpo: SimpoSpec | None = None
    lora: LoraSpec = LoraSpec()
    merge_weights: bool = False

    @property
    def produces_adapter(self) -> bool:
        """The saved model is an adapter on the base model (not full or merged weights)."""
        return self.type != "full" and not self.merge_weights


class Hyperparameters(SpecModel):
    epochs: float = 3
    learning_rate: float = 2e-4
    batch_size: int | Literal["auto"] = 8
    effective_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool | None = None
    warmup_ratio: float = 0.03
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = "cosine"
    seed: int = 42
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    max_steps: int | None = None
    weight_decay: float = 0.0


class Toleration(SpecModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(SpecModel):
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    memory: Quantity = "32Gi"
    cpu: Quantity = "4"
    shm_size: Quantity = "8Gi"
    ephemeral_storage: Quantity | None = None
    """Local disk per training pod (requests = limits); None: the data check's disk plan decides."""
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    affinity: dict[str, Any] | None = None
    priority_class_name: str = ""
    max_duration: str | None = None

    @field_validator("max_duration")
    @classmethod
    def _positive_duration(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    @property
    def max_duration_seconds(self) -> int | None:
        """`maxDuration` in seconds: the training Job's activeDeadlineSeconds (None: no deadline)."""
        return duration_seconds(self.max_duration) if self.max_duration is not None else None


class DistributedSpec(SpecModel):
    workers: int = 1
    sharding: Literal["none", "fsdp"] = "none"


class CheckpointSpec(SpecModel):
    interval_steps: int = 200
    keep: int = 2


class GateRule(SpecModel):
    metric: str
    min: float | None = None
    max: float | None = None


class EarlyStoppingSpec(SpecModel):
    patience: int = 3
    min_delta: float = 0.0


class GenerationSpec(SpecModel):
    max_samples: int = 100
    max_new_tokens: int = 128
    regex: str | None = None
    json_valid: bool = False


class EvaluationSpec(SpecModel):
    compare_base_model: bool = False
    gate: list[GateRule] = []
    interval_steps: int | None = None
    early_stopping: EarlyStoppingSpec | None = None
    generation: GenerationSpec | None = None


class OutputSpec(SpecModel):
    uri: SafeUri

    def run_uri(self, run: int) -> str:
        """The folder of one run: <uri>run-N/ (the CRD guarantees the trailing slash)."""
        base = self.uri if self.uri.endswith("/") else self.uri + "/"
        return f"{base}run-{run}/"


ETAG_MD5_ENV = "FTO_S3_ETAG_MD5"
"""The trainer's switch (finetune_trainer.core.storage) for checking downloads against the ETag as an MD5."""


class StorageSpec(SpecModel):
    """How pods reach object storage; one shape for a FineTuneJob (and a sweep's template) and a ModelServer."""

    endpoint: str = ""
    region: str = ""
    credentials_secret: str = ""
    etag_is_md5: StrictBool = True
    """False for an S3-compatible store whose single-PUT ETags are not MD5s: the pods get `FTO_S3_ETAG_MD5=off`,
    and a download of an object with no recorded sha256 is checked by its size only. Strict: the string "false"
    is refused by name, never read as a boolean."""


class MlflowSpec(SpecModel):
    tracking_uri: str
    experiment: str = ""
    """Empty: the experiment `<namespace>/<name>` of the FineTuneJob."""
    credentials_secret: str = ""
    """A Secret with MLFLOW_TRACKING_USERNAME + MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, given to the
    training pods as environment variables (secretKeyRef), never rendered into the trainer config."""


class TrackingSpec(SpecModel):
    mlflow: MlflowSpec | None = None


class ServingResourcesSpec(SpecModel):
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}


class ServingSpec(SpecModel):
    enabled: bool = False
    replicas: int = 1
    engine: Literal["transformers", "vllm"] = "transformers"
    max_concurrency: int = 8
    api_key_secret: str = ""
    """A Secret of the user's (key apiKey); empty: the operator generates one unless allow_unauthenticated."""
    allow_unauthenticated: bool = False
    """The explicit opt-out of any key (the CRD refuses it together with api_key_secret or server)."""
    resources: ServingResourcesSpec = ServingResourcesSpec()
    server: str = ""
    """A ModelServer (NAME or NAMESPACE/NAME) holding the adapter instead of a Deployment of its own."""

    @property
    def generates_key(self) -> bool:
        """Whether the operator makes this endpoint's key (a shared server's tenant always gets its own)."""
        return self.enabled and not self.api_key_secret and not self.allow_unauthenticated


class PodMetadataSpec(SpecModel):
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class FineTuneJobSpec(SpecModel):
    base_model: BaseModelSpec
    dataset: DatasetSpec
    method: MethodSpec = MethodSpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    resources: ResourcesSpec = ResourcesSpec()
    distributed: DistributedSpec = DistributedSpec()
    checkpointing: CheckpointSpec = CheckpointSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    output: OutputSpec
    storage: StorageSpec = StorageSpec()
    tracking: TrackingSpec = TrackingSpec()
    serving: ServingSpec = ServingSpec()
    pod_metadata: PodMetadataSpec = PodMetadataSpec()
    queue_name: str = ""
    suspend: bool = False

    @property
    def processes_per_worker(self) -> int:
        return max(1, self.resources.gpus)


TRAINING_FIELDS = (
    "baseModel",
    "dataset",
    "method",
    "hyperparameters",
    "distributed",
    "checkpointing",
    "output",
    "storage",
)
"""Top-level spec fields whose change starts a new run (plus resources.gpus/gpuResource and
EVALUATION_RUN_FIELDS)."""

EVALUATION_RUN_FIELDS = ("intervalSteps", "earlyStopping", "generation")
"""evaluation fields besides compareBaseModel that change what a run produces: which checkpoint is published
(intervalSteps, earlyStopping) and which test metrics it has (generation). The gate only judges them."""

WORLD_SIZE_RESOURCES = ("gpus", "gpuResource")
"""The resources that change what a run computes: the process count (world size) and the accelerator kind.
Every other resource field only says where and with how much room the pods run (placement)."""


def training_spec_hash(spec: FineTuneJobSpec) -> str:
    """A stable hash of everything that changes what a training run does; 16 hex digits."""
    # Defaults are left out, so adding a defaulted field to the API later does not retrain every job.
    wire = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    relevant = {name: wire.get(name) for name in TRAINING_FIELDS}
    resources = {k: v for k, v in (wire.get("resources") or {}).items() if k in WORLD_SIZE_RESOURCES}
    relevant["resources"] = resources or None
    relevant["compareBaseModel"] = wire.get("evaluation", {}).get("compareBaseModel", False)
    evaluation = {k: v for k, v in (wire.get("evaluation") or {}).items() if k in EVALUATION_RUN_FIELDS}
    if evaluation:  # absent when unset, so the hash of a job that sets none of them did not change
        relevant["evaluation"] = evaluation
    return content_hash(relevant)


VALIDATION_FIELDS = ("baseModel", "dataset", "method", "distributed")
"""What `finetune_trainer validate` reads: the data and the tokenizer, and for its estimates the method, the
world size, the hyperparameters in CHECKED_HYPERPARAMETERS, the pods' memory and the GPU type (the memory plan)."""

CHECKED_HYPERPARAMETERS = (
    "epochs",
    "batchSize",
    "effectiveBatchSize",
    "gradientAccumulationSteps",
    "gradientCheckpointing",
    "maxSteps",
    "precision",
)
"""The hyperparameters the step estimate and the memory plan depend on (a new learning rate needs no new
check)."""


def validation_spec_hash(spec: FineTuneJobSpec) -> str:
    """A hash of the spec fields a data check depends on: a run with the same ones is not checked again."""
    wire = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    relevant = {name: wire.get(name) for name in VALIDATION_FIELDS}
    relevant["steps"] = {k: v for k, v in (wire.get("hyperparameters") or {}).items() if k in CHECKED_HYPERPARAMETERS}
    # the memory plan is checked against the GPU type and the pod's memory, the sources' size against the
    # requested disk: a change there is checked again
    resources = wire.get("resources") or {}
    checked = (*WORLD_SIZE_RESOURCES, "memory", "ephemeralStorage")
    relevant["resources"] = {k: v for k, v in resources.items() if k in checked}
    relevant["gpuProduct"] = (resources.get("nodeSelector") or {}).get("nvidia.com/gpu.product")
    evaluation = wire.get("evaluation") or {}
    if "generation" in evaluation or "intervalSteps" in evaluation:  # checked against the data's schema/splits
        relevant["evaluation"] = {k: k in evaluation for k in ("generation", "intervalSteps")}
    return content_hash(relevant)


def placement_spec_hash(spec: FineTuneJobSpec) -> str:
    """A hash of where and how the training pods run but not what they compute: memory, cpu, /dev/shm,
    node selector, tolerations, affinity, priority class, pod labels and annotations, the Kueue queue.

    A change replaces the run's unfinished (or failed) Job, and the new pods resume the same run from its
    last checkpoint: raising memory after an out-of-memory kill must not throw the finished steps away."""
    wire = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)  # new defaulted fields: no change
    resources = {k: v for k, v in (wire.get("resources") or {}).items() if k not in WORLD_SIZE_RESOURCES}
    relevant = {
        "resources": resources or None,
        "podMetadata": wire.get("podMetadata"),
        "queueName": wire.get("queueName"),
    }
    return content_hash(relevant)


def parse_spec(raw: dict[str, Any]) -> FineTuneJobSpec:
    """Parse the `spec` of a FineTuneJob body (raises pydantic.ValidationError)."""
    return FineTuneJobSpec.model_validate(raw)


HUB_TOKEN_ENV = {
    "baseModel.uri": "FTO_HF_TOKEN_BASE_MODEL",
    "dataset.train.uri": "FTO_HF_TOKEN_TRAIN",
    "dataset.validation.uri": "FTO_HF_TOKEN_VALIDATION",
    "dataset.test.uri": "FTO_HF_TOKEN_TEST",
}
"""The validation pod's variable for each source's token (the trainer's core/hub.py reads the same names)."""


def hub_sources(spec: FineTuneJobSpec) -> dict[str, HubSource]:
    """The spec's hf:// sources by trainer-config field (`baseModel.uri`, `dataset.train.uri`, ...)."""
    found: dict[str, HubSource] = {"baseModel.uri": spec.base_model}
    for split in ("train", "validation", "test"):
        ref = getattr(spec.dataset, split)
        if ref is not None:
            found[f"dataset.{split}.uri"] = ref
    return {name: source for name, source in found.items() if source.from_hub}
