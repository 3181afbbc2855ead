"""The app factory: `create_app(settings, engine=None)` builds the FastAPI application.

Why a factory at module level: tests and the benchmark import and run the very app the pod runs, and
routes never hide inside a `main()`. The model loads on a background thread started by the lifespan, so
the process answers /healthz (liveness) at once while /readyz stays 503 until the model is in memory;
a load failure is reported by /readyz and handed to `app.state.on_load_failure` (the CLI exits then,
so Kubernetes shows a crash with the reason in the log instead of a pod that is never ready).
Every error leaves in OpenAI's shape (`protocol.APIError`).

Every /v1 request passes `guard.RequestGuard` first: the API key from the headers (401 before the body is
read), the concurrency limit (429), the body size limit (413). On a shared server the key may also be a tenant's
(`serving.auth`: the `keySha256` of its adapters.json entries, from the copy the sidecar keeps in the pod), which
reaches that tenant's adapters only. A shared server (serve.json `maxAdapters` > 0, a
ModelServer) also has vLLM's two runtime-LoRA routes, /v1/load_lora_adapter and /v1/unload_lora_adapter, for
its adapters sidecar: they exist only on the admin listener (127.0.0.1, `FTO_ADMIN_PORT`) with the per-pod token
the sidecar wrote into the pod's own emptyDir, never on the Service port.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from finetune_trainer.serving.keyfile import WatchedKeys
from finetune_trainer.serving.server import api
from finetune_trainer.serving.server.config import ServeSettings
from finetune_trainer.serving.server.engine import Engine
from finetune_trainer.serving.server.guard import RequestGuard
from finetune_trainer.serving.server.metrics import MetricsMiddleware, ServerMetrics
from finetune_trainer.serving.server.protocol import APIError
from finetune_trainer.serving.server.state import ModelState

log = logging.getLogger(__name__)


def error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _validation_error(error: RequestValidationError) -> APIError:
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in item.get('loc', ()) if p != 'body') or 'body'}: "
        + ("unknown parameter: this server does not define it" if item.get("type") == "extra_forbidden" else "")
        + ("" if item.get("type") == "extra_forbidden" else str(item.get("msg")))
        for item in problems
    )
    code = "unknown_parameter" if first.get("type") == "extra_forbidden" else None
    return APIError(400, message or "invalid request", "invalid_request_error", param, code)


class LoadAdapterRequest(BaseModel):
    """vLLM's body of /v1/load_lora_adapter (plus `run`, reported by /v1/models)."""

    lora_name: str = Field(min_length=1, max_length=253)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False
    run: int | None = Field(default=None, ge=0)


class UnloadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1, max_length=253)


def _admin_router(settings: ServeSettings, state: ModelState) -> APIRouter:
    """Runtime LoRA loading on a shared server (vLLM's routes and answers)."""
    import asyncio
    from pathlib import Path

    routes = APIRouter(prefix="/v1")
    limit = settings.config.max_adapters

    @routes.post("/load_lora_adapter", response_class=PlainTextResponse)
    async def load_adapter(body: LoadAdapterRequest) -> str:
        engine = state.engine_for(settings.config.served_model_name)  # 503 while loading
        if limit == 0:
            raise APIError(
                400, "not a shared server: serve.json has no maxAdapters", "invalid_request_error", None, None
            )
        if body.lora_name == settings.config.served_model_name:
            raise APIError(
                400, "an adapter cannot take the base model's name", "invalid_request_error", "lora_name", None
            )
        loaded = engine.adapters()
        if body.lora_name in loaded and not body.load_inplace:
            message = f"The lora adapter '{body.lora_name}' has already been loaded"
            raise APIError(400, message, "invalid_request_error", "lora_name", None)
        if body.lora_name not in loaded and len(loaded) >= limit:
            message = f"the server holds its maximum of {limit} adapters"
            raise APIError(400, message, "invalid_request_error", "lora_name", None)
        if not (Path(body.lora_path) / "adapter_config.json").is_file():
            message = f"{body.lora_path} holds no adapter_config.json"
            raise APIError(400, message, "invalid_request_error", "lora_path", None)
        try:
            await asyncio.wrap_future(engine.load_adapter(body.lora_name, body.lora_path, body.run))
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise APIError(
                400, f"cannot load {body.lora_path}: {error}", "invalid_request_error", None, None
            ) from error
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @routes.post("/unload_lora_adapter", response_class=PlainTextResponse)
    async def unload_adapter(body: UnloadAdapterRequest) -> str:
        engine = state.engine_for(settings.config.served_model_name)
        try:
            await asyncio.wrap_future(engine.unload_adapter(body.lora_name))
        except KeyError as error:
            message = f"The lora adapter '{body.lora_name}' cannot be found"
            raise APIError(404, message, "invalid_request_error", "lora_name", None) from error
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    return routes


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal, ours or the framework's, answered in the OpenAI error shape."""

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if error.status_code < 500 else "server_error"
        return error_response(APIError(error.status_code, str(error.detail), type_, None, None))


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    """The server app. With `engine`, serve that (already loaded) engine; else load per settings."""
    metrics = ServerMetrics()
    state = ModelState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            state.serve(engine, owned=False)
        else:
            on_failure = getattr(app.state, "on_load_failure", None)
            threading.Thread(target=state.load, args=(on_failure,), name="model-loader", daemon=True).start()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="finetune-operator model server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.model_state = state
    app.state.metrics = metrics
    app.state.on_load_failure = None
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    _add_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health")  # vLLM's name for it: what the gateway's readiness asks an upstream
    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body: dict[str, Any] = {
            "status": state.status,
            "model": settings.config.served_model_name,
            "run": settings.config.run,
        }
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/metrics")
    async def prometheus() -> Any:
        return metrics.exposition()

    app.include_router(api.router(state, metrics))
    if settings.config.max_adapters:
        app.include_router(_admin_router(settings, state))
    shared = bool(settings.config.max_adapters)
    keys = WatchedKeys(  # a shared server's tenant keys come with its adapters (serving.auth)
        settings.api_key,
        settings.adapters_file if shared else None,
        reserved=frozenset({settings.config.served_model_name}),
    )
    app.state.keys = keys
    app.add_middleware(
        RequestGuard,
        keys=keys.current,
        max_body_bytes=settings.config.max_body_bytes,
        max_requests=settings.config.max_requests,
        admin_port=settings.admin_port if settings.config.max_adapters else None,
        admin_token_file=settings.admin_token_file,
    )
    return app
