"""OpenAI's fine-tuning job create request -> a FineTuneJob manifest in the caller's namespace. Pure.

Why pure and apart from the routes: every field of the request is either mapped to the CRD or refused by name
(`ApiError(400, param=<the field>)`), and that decision is the part worth testing exhaustively without a cluster.
The routes check the files exist, pick the name and the object storage places, and create the object as the
caller.

What a job records so it can be shown again as OpenAI's `FineTuningJob` (job_view.py) with nothing kept in the
service: the label `api.finetune.dev/job: openai` (lists select on it), and annotations for what the spec cannot
hold (the OpenAI model name, the file ids, the suffix, the metadata, the method's name and the learning rate that
multiplier 1 means). The spec is the truth for everything it holds (epochs, batch size, learning rate, seed, beta).

Job ids: the FineTuneJob's name, `ftjob-` + 20 lowercase base32 characters drawn by the routes
(`new_job_name`); stable (a name never changes) and derived from the object.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from finetune_trainer.finetuning_api.catalog import CatalogEntry
from finetune_trainer.finetuning_api.errors import ApiError

GROUP = "finetune.dev"
VERSION = "v1alpha1"
PLURAL = "finetunejobs"
API_LABEL = "api.finetune.dev/job"
API_LABEL_VALUE = "openai"
ANNOTATION = "api.finetune.dev/"
A_MODEL = ANNOTATION + "model"
A_TRAINING_FILE = ANNOTATION + "training-file"
A_VALIDATION_FILE = ANNOTATION + "validation-file"
A_SUFFIX = ANNOTATION + "suffix"
A_METADATA = ANNOTATION + "metadata"
A_METHOD = ANNOTATION + "method"
A_BASE_LEARNING_RATE = ANNOTATION + "base-learning-rate"
A_CANCELLED_AT = ANNOTATION + "cancelled-at"
"""Set by a cancel (with spec.suspend: true): the job shows as `cancelled` and can no longer be resumed."""
JOB_PREFIX = "ftjob-"
JOB_NAME = re.compile(r"^ftjob-[a-z2-7]{20}$")

CREATE_FIELDS = frozenset(
    {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "method", "hyperparameters",
     "integrations"}
)  # fmt: skip
HYPERPARAMETERS = {
    "supervised": ("batch_size", "learning_rate_multiplier", "n_epochs"),
    "dpo": ("batch_size", "beta", "learning_rate_multiplier", "n_epochs"),
}
SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
FILE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_SEED = 2**31 - 1
DEFAULT_BETA = 0.1
TEST_SPLIT = 0.1
"""The share of the training file held out as the test split: the CRD requires one (every run is tested before
it is published) and OpenAI's request has no test file."""


@dataclass(frozen=True)
class CreateRequest:
    """A checked create request; None stands for "auto" or not given (the catalog entry's default)."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    method: Literal["supervised", "dpo"] = "supervised"
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    beta: float | None = None


@dataclass(frozen=True)
class JobTarget:
    """Where a new job's data and outputs are (the routes derive them from the config and the file store)."""

    namespace: str
    name: str
    training_uri: str
    validation_uri: str | None
    output_uri: str
    storage: Mapping[str, str | bool] = field(default_factory=dict)


def new_job_name() -> str:
    """A fresh job id: `ftjob-` + 20 characters of base32 (100 random bits), valid as a Kubernetes name."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return JOB_PREFIX + "".join(secrets.choice(alphabet) for _ in range(20))


def _refuse(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _optional_string(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _refuse(f"'{key}' must be a string", key, "invalid_type")
    return value


def _file_id(body: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    value = _optional_string(body, key)
    if value is None:
        if required:
            raise _refuse(f"Missing required parameter: '{key}'", key, "missing_required_parameter")
        return None
    if not FILE_ID.match(value):
        raise _refuse(f"'{key}' {value!r} is not a file id (upload the file with purpose fine-tune)", key)
    return value


def _metadata(value: object) -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _refuse("'metadata' must be an object of string keys and string values", "metadata", "invalid_type")
    if len(value) > 16:
        raise _refuse(f"'metadata' has {len(value)} pairs; at most 16 are allowed", "metadata")
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise _refuse(f"metadata key {key!r} must be a string of 1 to 64 characters", "metadata")
        if not isinstance(item, str) or len(item) > 512:
            raise _refuse(f"metadata[{key!r}] must be a string of at most 512 characters", f"metadata.{key}")
    return dict(value)


def _auto_or(value: object, param: str, kind: type, low: float, high: float) -> Any:
    """A hyperparameter: "auto" or absent -> None; else a number of `kind` within [low, high]."""
    if value is None or value == "auto":
        return None
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    whole = kind is not int or number.is_integer()
    if not math.isfinite(number) or not whole or not low <= number <= high:
        what = "an integer" if kind is int else "a number"
        raise _refuse(f"'{param}' must be \"auto\" or {what} from {low:g} to {high:g}, not {value!r}", param)
    return int(number) if kind is int else number


def _hyperparameters(raw: object, method: str, where: str) -> dict[str, Any]:
    """Check one hyperparameters object of `method`; unknown names are refused (never ignored)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _refuse(f"'{where}' must be an object", where, "invalid_type")
    allowed = HYPERPARAMETERS[method]
    for key in raw:
        if key not in allowed:
            raise _refuse(
                f"Unknown hyperparameter {where}.{key} for method {method}; supported: {', '.join(allowed)}",
                f"{where}.{key}",
                "unknown_parameter",
            )
    return {
        "n_epochs": _auto_or(raw.get("n_epochs"), f"{where}.n_epochs", int, 1, 50),
        "batch_size": _auto_or(raw.get("batch_size"), f"{where}.batch_size", int, 1, 4096),
        "learning_rate_multiplier": _auto_or(
            raw.get("learning_rate_multiplier"), f"{where}.learning_rate_multiplier", float, 1e-6, 100
        ),
        "beta": _auto_or(raw.get("beta"), f"{where}.beta", float, 1e-6, 10) if method == "dpo" else None,
    }


def _method(body: Mapping[str, Any]) -> tuple[Literal["supervised", "dpo"], dict[str, Any]]:
    """`method` and the legacy top-level `hyperparameters` -> the method and its hyperparameters."""
    legacy = body.get("hyperparameters")
    raw = body.get("method")
    if raw is None:
        return "supervised", _hyperparameters(legacy, "supervised", "hyperparameters")
    if not isinstance(raw, Mapping):
        raise _refuse("'method' must be an object with a type", "method", "invalid_type")
    kind = raw.get("type")
    if kind == "reinforcement":
        raise _refuse(
            "method.type 'reinforcement' is not supported here (no graders); use supervised or dpo",
            "method.type",
            "unsupported_parameter",
        )
    if kind not in ("supervised", "dpo"):
        raise _refuse(f"method.type must be 'supervised' or 'dpo', not {kind!r}", "method.type")
    for key in raw:
        if key not in ("type", kind):
            raise _refuse(f"method.{key} does not apply to method.type {kind}", f"method.{key}", "unknown_parameter")
    own = raw.get(kind)
    if own is not None and not isinstance(own, Mapping):
        raise _refuse(f"method.{kind} must be an object", f"method.{kind}", "invalid_type")
    own = own or {}
    for key in own:
        if key != "hyperparameters":
            raise _refuse(f"Unknown parameter method.{kind}.{key}", f"method.{kind}.{key}", "unknown_parameter")
    given = own.get("hyperparameters")
    if legacy is not None and (given is not None or kind != "supervised"):
        raise _refuse(
            f"give the hyperparameters once, in method.{kind}.hyperparameters (the top-level 'hyperparameters' "
            "is OpenAI's deprecated form, for supervised jobs only)",
            "hyperparameters",
        )
    source = given if given is not None else legacy
    where = f"method.{kind}.hyperparameters" if given is not None else "hyperparameters"
    return kind, _hyperparameters(source, kind, where)


def parse_create(body: object) -> CreateRequest:
    """Check a create request field by field. Every refusal is a 400 naming the field (`param`)."""
    if not isinstance(body, Mapping):
        raise _refuse("The request body must be a JSON object", "body", "invalid_type")
    for key in body:
        if key not in CREATE_FIELDS:
            raise _refuse(f"Unknown parameter: '{key}'", key, "unknown_parameter")
    integrations = body.get("integrations")
    if integrations not in (None, []):
        raise _refuse(
            "'integrations' (Weights and Biases) is not supported: every run logs TensorBoard files, and MLflow "
            "is set on a FineTuneJob's spec.tracking",
            "integrations",
            "unsupported_parameter",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _refuse("Missing required parameter: 'model'", "model", "missing_required_parameter")
    if model.startswith("ft:"):
        raise _refuse(
            "Fine-tuning a fine-tuned model is not supported here; start from a base model", "model", "invalid_value"
        )
    suffix = _optional_string(body, "suffix")
    if suffix is not None and not SUFFIX.match(suffix):
        raise _refuse("'suffix' must be 1 to 64 letters, digits, '.', '_' or '-'", "suffix")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise _refuse(f"'seed' must be an integer from 0 to {MAX_SEED}", "seed")
    method, hyper = _method(body)
    return CreateRequest(
        model=model,
        training_file=_file_id(body, "training_file", required=True) or "",
        validation_file=_file_id(body, "validation_file", required=False),
        suffix=suffix,
        seed=seed,
        metadata=_metadata(body.get("metadata")),
        method=method,
        n_epochs=hyper.get("n_epochs"),
        batch_size=hyper.get("batch_size"),
        learning_rate_multiplier=hyper.get("learning_rate_multiplier"),
        beta=hyper.get("beta"),
    )


def job_manifest(request: CreateRequest, entry: CatalogEntry, target: JobTarget) -> dict[str, Any]:
    """The FineTuneJob a checked request becomes.

    Mapped: the catalog entry gives baseModel, resources (and the GPU type's node selector), method.type and
    serving; n_epochs -> hyperparameters.epochs, batch_size -> batchSize, learning_rate_multiplier x the entry's
    learning rate -> learningRate, seed -> hyperparameters.seed, dpo -> method.objective dpo with dpo.beta.
    "auto" (or absent) takes the entry's value (batch size "auto" is the memory plan's largest micro-batch).
    The entry's checkpointSteps and (with a validation file) validationSteps set the checkpoint and validation
    intervals.
    The model is served when it passes: a fine-tuned model is usable for inference, as on OpenAI."""
    multiplier = request.learning_rate_multiplier or 1.0
    hyperparameters: dict[str, Any] = {
        "epochs": request.n_epochs or entry.epochs,
        "batchSize": request.batch_size or entry.batch_size,
        "learningRate": entry.learning_rate * multiplier,
    }
    if request.seed is not None:
        hyperparameters["seed"] = request.seed
    method: dict[str, Any] = {"type": entry.method, "objective": "sft"}
    if request.method == "dpo":
        method = {**method, "objective": "dpo", "dpo": {"beta": request.beta or DEFAULT_BETA}}
    dataset: dict[str, Any] = {"train": {"uri": target.training_uri}}
    if target.validation_uri:
        dataset["validation"] = {"uri": target.validation_uri}
        dataset["split"] = {"test": TEST_SPLIT}
    else:  # OpenAI trains on the whole file without a validation file: hold out only the test split
        dataset["split"] = {"validation": 0.0, "test": TEST_SPLIT}
    annotations = {
        A_MODEL: request.model,
        A_TRAINING_FILE: request.training_file,
        A_METHOD: request.method,
        A_BASE_LEARNING_RATE: repr(entry.learning_rate),
        A_METADATA: json.dumps(dict(request.metadata), sort_keys=True),
    }
    if request.validation_file:
        annotations[A_VALIDATION_FILE] = request.validation_file
    if request.suffix:
        annotations[A_SUFFIX] = request.suffix
    spec: dict[str, Any] = {
        "baseModel": {"uri": entry.base_model},
        "dataset": dataset,
        "method": method,
        "hyperparameters": hyperparameters,
        "output": {"uri": target.output_uri},
        "serving": {**dict(entry.serving), "enabled": True},
    }
    if entry.checkpoint_steps is not None:
        spec["checkpointing"] = {"intervalSteps": entry.checkpoint_steps}
    if entry.validation_steps is not None and target.validation_uri:
        spec["evaluation"] = {"intervalSteps": entry.validation_steps}
    resources = entry.spec_resources()
    if resources:
        spec["resources"] = resources
    if target.storage:
        spec["storage"] = dict(target.storage)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {
            "name": target.name,
            "namespace": target.namespace,
            "labels": {API_LABEL: API_LABEL_VALUE},
            "annotations": annotations,
        },
        "spec": spec,
    }
