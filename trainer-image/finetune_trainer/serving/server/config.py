"""The server's configuration: `serve.json` from the operator plus what comes from the environment.

Why typed: serve.json is the operator-to-server contract (docs/trainer-contract.md section 6); a typo
in a field name must stop the server with a message naming the field, not be silently ignored, so the
model is pydantic with `extra="forbid"` and camelCase aliases that mirror the JSON. Secrets (the API
key) and placement (device, local work folder) come from the environment, never from the ConfigMap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune_trainer.core.errors import ConfigInvalid

Task = Literal["causal-lm", "sequence-classification"]
Device = Literal["auto", "cpu", "cuda"]


class ServeConfig(BaseModel):
    """serve.json: which model to fetch and under which name to serve it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    served_model_name: str = Field(alias="servedModelName", min_length=1, max_length=253)
    task: Task = "causal-lm"
    base_model_uri: str | None = Field(default=None, alias="baseModelUri")
    """The base model folder; needed when `modelUri` holds an adapter, ignored for full weights."""
    model_uri: str = Field(alias="modelUri", min_length=1)
    """An adapter folder (`adapter_config.json`) or a full model folder; s3:// or a local path."""
    run: int | None = Field(default=None, ge=0)
    max_concurrency: int = Field(default=8, alias="maxConcurrency", ge=1, le=256)
    """The most sequences generated together in one batch (the engine's batch size)."""
    max_adapters: int = Field(default=0, alias="maxAdapters", ge=0, le=256)
    """A shared server (ModelServer): the most LoRA adapters /v1/load_lora_adapter loads on the base model;
    0: a server of one model, without the adapter routes."""


def format_validation_error(error: ValidationError) -> str:
    """Every error of a pydantic validation on one line each, with its field path."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{path}: {item['msg']}")
    return "; ".join(lines)


def load_serve_config(path: Path) -> ServeConfig:
    """Read and validate serve.json; any problem is a ConfigInvalid naming the file and the fields."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigInvalid(f"cannot read {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise ConfigInvalid(f"{path} is not JSON: {error}") from error
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigInvalid(f"{path}: {format_validation_error(error)}") from error


@dataclass(frozen=True)
class ServeSettings:
    """Everything `create_app` needs: the validated serve.json and the process environment."""

    config: ServeConfig
    api_key: str | None = None
    """When set, every /v1 request must carry `Authorization: Bearer <key>`."""
    work_dir: Path = Path("/tmp/finetune-serve")
    """Where model files from object storage are copied before loading."""
    device: Device = "auto"

    @classmethod
    def from_env(cls, config: ServeConfig, environ: dict[str, str] | None = None) -> ServeSettings:
        """Settings from `FTO_API_KEY`, `FTO_WORK_DIR` and `FTO_DEVICE` (auto | cpu | cuda)."""
        env = dict(os.environ) if environ is None else environ
        device = env.get("FTO_DEVICE", "auto") or "auto"
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigInvalid(f"FTO_DEVICE must be auto, cpu or cuda, not {device!r}")
        work_dir = Path(env.get("FTO_WORK_DIR") or "/tmp/finetune-serve")
        return cls(config=config, api_key=env.get("FTO_API_KEY") or None, work_dir=work_dir, device=device)  # type: ignore[arg-type]
