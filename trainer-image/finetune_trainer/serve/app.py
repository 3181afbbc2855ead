"""The app factory: `create_app(settings, engine=None)` builds the FastAPI application.

Why a factory at module level: tests and the benchmark import and run the very app the pod runs, and
routes never hide inside a `main()`. The model loads on a background thread started by the lifespan, so
the process answers /healthz (liveness) at once while /readyz stays 503 until the model is in memory;
a load failure is reported by /readyz and handed to `app.state.on_load_failure` (the CLI exits then,
so Kubernetes shows a crash with the reason in the log instead of a pod that is never ready).
Every error leaves in OpenAI's shape (`protocol.APIError`).
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from finetune_trainer.serve import api
from finetune_trainer.serve.config import ServeSettings
from finetune_trainer.serve.engine import Engine
from finetune_trainer.serve.metrics import MetricsMiddleware, ServerMetrics
from finetune_trainer.serve.protocol import APIError
from finetune_trainer.serve.state import ModelState

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
        f"{'.'.join(str(p) for p in item.get('loc', ()) if p != 'body') or 'body'}: {item.get('msg')}"
        for item in problems
    )
    return APIError(400, message or "invalid request", "invalid_request_error", param, None)


def _require_api_key(settings: ServeSettings) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if not settings.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "You didn't provide an API key: send 'Authorization: Bearer <key>'",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )
        if not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", "invalid_request_error", None, "invalid_api_key")

    return check


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

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

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

    app.include_router(api.router(state, metrics), dependencies=[Depends(_require_api_key(settings))])
    return app
