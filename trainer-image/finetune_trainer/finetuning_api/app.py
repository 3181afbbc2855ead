"""The Starlette application: `/healthz`, the `/v1/*` routes behind authentication, OpenAI-shaped errors.

Why a builder taking routes: the files routes (here) and the jobs, models and inference routes (their own
modules) are lists of Starlette routes; `build_app` mounts them all behind the one authentication middleware,
so no route can be reached unauthenticated. `kube_factory` returns the service's own Kubernetes
Configuration (tests pass one for their cluster); it is called once, lazily, and its clients (`Kube`) reused
(the in-cluster loader refreshes the rotated ServiceAccount token itself). A route reaches them as
`request.app.state.kube()` and the config as `request.app.state.config`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from finetune_trainer.finetuning_api.auth import AuthMiddleware
from finetune_trainer.finetuning_api.config import ApiConfig
from finetune_trainer.finetuning_api.errors import ApiError, api_error_handler
from finetune_trainer.finetuning_api.kube import Kube, KubeFactory, default_kube_factory


class _Once:
    """The service's Kubernetes clients (`Kube`), made on first use (so the app builds without a cluster) and then
    shared by every request."""

    def __init__(self, factory: KubeFactory) -> None:
        self.factory = factory
        self.value: Kube | None = None
        self.lock = threading.Lock()

    def __call__(self) -> Kube:
        with self.lock:
            if self.value is None:
                self.value = Kube(self.factory())
            return self.value


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def unknown_route(request: Request) -> Response:
    raise ApiError(404, f"Invalid URL ({request.method} {request.url.path})")


def build_app(
    config: ApiConfig,
    *,
    kube_factory: KubeFactory | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The service: health, files and `extra_routes` (jobs, models, inference), all `/v1` behind auth."""
    from finetune_trainer.finetuning_api.catalog import catalog_at
    from finetune_trainer.finetuning_api.routes_files import routes as file_routes
    from finetune_trainer.finetuning_api.routes_jobs import job_routes
    from finetune_trainer.finetuning_api.routes_models import model_routes

    kube = _Once(kube_factory or default_kube_factory(config))
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            *file_routes(),
            *job_routes(config, catalog := catalog_at(config.catalog_path)),
            *model_routes(catalog),
            *extra_routes,
            Route("/v1/{rest:path}", unknown_route, methods=["GET", "POST", "DELETE", "PUT", "PATCH"]),
        ],
        middleware=[Middleware(AuthMiddleware, kube=kube)],
        exception_handlers={ApiError: api_error_handler},
    )
    app.state.config = config
    app.state.kube = kube  # app.state.kube() -> Kube: .service (TokenReview, SubjectAccessReview), .acting_as
    return app
