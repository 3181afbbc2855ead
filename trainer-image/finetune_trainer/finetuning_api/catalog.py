"""The catalog of base models the API offers: OpenAI-style `model` names mapped to a base model in object storage,
the resources and GPU type a job of that model gets, and the defaults that `"auto"` hyperparameters resolve to.

Why a catalog rather than a base model URI in the request: OpenAI's `model` is a name (`gpt-4o-mini`), and a
script moved from OpenAI sends a name; the cluster's operators decide which models exist, where their weights are
and what GPU they need (the chart's values, read from a YAML file mounted into the API pods). Pure: parsing and
lookup only; the file is read once at start-up by `load_catalog`.

An entry (every key but `name` and `baseModel` optional; any other key is refused by name):

    - name: smollm2-135m                       # what clients send as `model`
      baseModel: s3://models/smollm2-135m/     # spec.baseModel.uri
      resources: {gpus: 1, memory: 32Gi}       # spec.resources (a FineTuneJob's fields)
      gpuType: NVIDIA-L4                       # spec.resources.nodeSelector[nvidia.com/gpu.product]
      method: lora                             # spec.method.type: lora (default), qlora or full
      epochs: 3                                # n_epochs "auto"
      batchSize: auto                          # batch_size "auto" (an integer, or auto: the memory plan's)
      learningRate: 2.0e-4                     # the learning rate of learning_rate_multiplier 1 ("auto")
      serving: {engine: vllm}                  # spec.serving fields: engine, server, replicas, resources
      checkpointSteps: 200                     # spec.checkpointing.intervalSteps (a job's listed checkpoints)
      validationSteps: 50                      # spec.evaluation.intervalSteps of a job with a validation_file
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from finetune_trainer.finetuning_api.errors import ApiError

log = logging.getLogger(__name__)

ENTRY_KEYS = frozenset(
    {
        "name",
        "baseModel",
        "resources",
        "gpuType",
        "method",
        "epochs",
        "batchSize",
        "learningRate",
        "serving",
        "checkpointSteps",
        "validationSteps",
    }
)
SERVING_KEYS = frozenset({"engine", "server", "replicas", "resources"})
"""The serving fields a catalog may set: never the key fields (every API job gets its own generated key)."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""No ':' (the separator of fine-tuned model names, `ft:<model>:...`) and no '/'."""
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


class CatalogError(ValueError):
    """The catalog file is wrong: raised at start-up, naming the entry and the key."""


@dataclass(frozen=True)
class CatalogEntry:
    """One base model offered to clients."""

    name: str
    base_model: str
    resources: Mapping[str, Any] = field(default_factory=dict)
    gpu_type: str | None = None
    method: Literal["lora", "qlora", "full"] = "lora"
    epochs: int = 3
    batch_size: int | Literal["auto"] = "auto"
    learning_rate: float = 2e-4
    serving: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_steps: int | None = None
    """spec.checkpointing.intervalSteps (None: the CRD's 200): the checkpoints `checkpoints.list` can name."""
    validation_steps: int | None = None
    """spec.evaluation.intervalSteps of a job given a validation_file (None: validated once, after training), as
    OpenAI measures validation loss during training; the model with the lowest validation loss is published."""

    def spec_resources(self) -> dict[str, Any]:
        """`spec.resources` of a job of this model: the entry's resources and its GPU type's node selector."""
        resources = dict(self.resources)
        if self.gpu_type:
            selector = dict(resources.get("nodeSelector") or {})
            selector[GPU_PRODUCT_LABEL] = self.gpu_type
            resources["nodeSelector"] = selector
        return resources


@dataclass(frozen=True)
class Catalog:
    """The offered base models by name (the order of the file is the order of `GET /v1/models`)."""

    entries: tuple[CatalogEntry, ...]

    def get(self, name: str) -> CatalogEntry | None:
        return next((entry for entry in self.entries if entry.name == name), None)

    def require(self, name: object, param: str = "model") -> CatalogEntry:
        """The entry of a request's `model`, or OpenAI's answer to a model it does not offer: 400
        `model_not_found` naming the param (what OpenAI answers for an unknown model on job creation)."""
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"'{param}' must be a model name (a string)", param=param, code="invalid_type")
        entry = self.get(name)
        if entry is None:
            offered = ", ".join(e.name for e in self.entries) or "none"
            raise ApiError(
                400,
                f"Model {name!r} is not available for fine-tuning here; the models offered are: {offered}",
                param=param,
                code="model_not_found",
            )
        return entry


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CatalogError(f"{where}: must be a positive integer, not {value!r}")
    return value


def _optional_positive_int(value: object, where: str) -> int | None:
    return None if value is None else _positive_int(value, where)


def parse_entry(raw: object, index: int) -> CatalogEntry:
    """One catalog entry, with every key checked (an unknown key is an error, not ignored)."""
    where = f"catalog[{index}]"
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a mapping with name and baseModel")
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        raise CatalogError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(ENTRY_KEYS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise CatalogError(f"{where}.name: {name!r} must be 1-64 letters, digits, '.', '_' or '-' (no ':' or '/')")
    where = f"catalog[{index}] ({name})"
    base = raw.get("baseModel")
    if not isinstance(base, str) or not base.startswith("s3://"):
        raise CatalogError(f"{where}.baseModel: must be an s3:// URI of the base model's folder, not {base!r}")
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise CatalogError(f"{where}.resources: must be a mapping of spec.resources fields")
    serving = raw.get("serving") or {}
    if not isinstance(serving, Mapping) or set(serving) - SERVING_KEYS:
        raise CatalogError(f"{where}.serving: only {', '.join(sorted(SERVING_KEYS))} may be set")
    gpu_type = raw.get("gpuType")
    if gpu_type is not None and not isinstance(gpu_type, str):
        raise CatalogError(f"{where}.gpuType: must be a string such as NVIDIA-L4")
    method = raw.get("method", "lora")
    if method not in ("lora", "qlora", "full"):
        raise CatalogError(f"{where}.method: must be lora, qlora or full, not {method!r}")
    batch = raw.get("batchSize", "auto")
    if batch != "auto":
        batch = _positive_int(batch, f"{where}.batchSize")
    rate = raw.get("learningRate", 2e-4)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        raise CatalogError(f"{where}.learningRate: must be a positive number, not {rate!r}")
    return CatalogEntry(
        name=name,
        base_model=base,
        resources=dict(resources),
        gpu_type=gpu_type,
        method=method,
        epochs=_positive_int(raw.get("epochs", 3), f"{where}.epochs"),
        batch_size=batch,
        learning_rate=float(rate),
        serving=dict(serving),
        checkpoint_steps=_optional_positive_int(raw.get("checkpointSteps"), f"{where}.checkpointSteps"),
        validation_steps=_optional_positive_int(raw.get("validationSteps"), f"{where}.validationSteps"),
    )


def parse_catalog(raw: object) -> Catalog:
    """The catalog from its YAML document: a list of entries (or `{models: [...]}`), names unique."""
    if isinstance(raw, Mapping) and set(raw) == {"models"}:
        raw = raw["models"]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise CatalogError("the catalog must be a list of {name, baseModel, ...} entries")
    entries = tuple(parse_entry(item, index) for index, item in enumerate(raw))
    names = [entry.name for entry in entries]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise CatalogError(f"catalog: the model name {duplicate!r} appears more than once")
    return Catalog(entries)


def load_catalog(path: str | Path | None) -> Catalog:
    """Read the catalog file (None: no base models are offered, and every create is refused by name)."""
    if path is None:
        return Catalog(())
    text = Path(path).read_text(encoding="utf-8")
    try:
        return parse_catalog(yaml.safe_load(text))
    except CatalogError as error:
        raise CatalogError(f"{path}: {error}") from None


def catalog_at(path: str) -> Catalog:
    """The service's catalog: the file at `path` (ApiConfig.catalog_path), or none offered when there is no such
    file (a service for inference and files only; every create is then refused by name). A file that exists but
    is wrong stops the service at start-up (CatalogError)."""
    if not Path(path).is_file():
        log.warning("no model catalog at %s: no base model is offered for fine-tuning", path)
        return Catalog(())
    return load_catalog(path)
