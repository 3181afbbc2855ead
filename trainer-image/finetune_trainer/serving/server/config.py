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
    max_body_bytes: int = Field(default=1 << 20, alias="maxBodyBytes", ge=1024, le=64 << 20)
    """The largest request body read; a larger one is refused with 413 before more of it is read."""
    max_prompt_tokens: int | None = Field(default=None, alias="maxPromptTokens", ge=1)
    """The most prompt tokens a request may carry (400 beyond); unset: the context length less one."""
    default_max_tokens: int = Field(default=256, alias="defaultMaxTokens", ge=1)
    """What a chat request that sets no `max_tokens` generates at most (a completion: OpenAI's 16); an explicit
    `max_tokens` may go up to what the context leaves after the prompt."""
    max_requests: int = Field(default=64, alias="maxRequests", ge=1, le=4096)
    """The most /v1 requests in progress at once (reading their body, queued or generating); 429 beyond."""


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
    admin_port: int = 8001
    """A shared server's adapter routes listen here on 127.0.0.1 only (never the Service port)."""
    admin_token_file: Path = Path("/adapters/.admin-token")
    """The per-pod token the adapter routes demand; the sidecar writes it into the pod's own adapters emptyDir
    (the server mounts it read-only), so nothing outside the pod ever holds it."""
    adapters_file: Path = Path("/adapters/.adapters.json")
    """A shared server's copy of adapters.json (the sidecar writes it into the same emptyDir each pass): its
    entries' `keySha256` are the tenant keys (serving.auth); read only when serve.json has `maxAdapters`."""

    @classmethod
    def from_env(cls, config: ServeConfig, environ: dict[str, str] | None = None) -> ServeSettings:
        """Settings from `FTO_API_KEY`, `FTO_WORK_DIR`, `FTO_DEVICE` (auto | cpu | cuda), `FTO_ADMIN_PORT`,
        `FTO_ADMIN_TOKEN_FILE` and `FTO_ADAPTERS_FILE`."""
        env = dict(os.environ) if environ is None else environ
        device = env.get("FTO_DEVICE", "auto") or "auto"
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigInvalid(f"FTO_DEVICE must be auto, cpu or cuda, not {device!r}")
        work_dir = Path(env.get("FTO_WORK_DIR") or "/tmp/finetune-serve")
        admin_port = env.get("FTO_ADMIN_PORT") or "8001"
        if not admin_port.isdigit() or not 0 < int(admin_port) < 65536:
            raise ConfigInvalid(f"FTO_ADMIN_PORT must be a port number, not {admin_port!r}")
        return cls(
            config=config,
            api_key=env.get("FTO_API_KEY") or None,
            work_dir=work_dir,
            device=device,  # type: ignore[arg-type]
            admin_port=int(admin_port),
            admin_token_file=Path(env.get("FTO_ADMIN_TOKEN_FILE") or "/adapters/.admin-token"),
            adapters_file=Path(env.get("FTO_ADAPTERS_FILE") or "/adapters/.adapters.json"),
        )
