"""OpenAI's fine-tuning jobs API (`/v1/fine_tuning/jobs`): create, list, retrieve, cancel, pause, resume, events,
checkpoints; each job a FineTuneJob in the caller's namespace, every Kubernetes call made as the caller.

Why this order in create: the request is checked field by field first (jobs.parse_create, the catalog), then a
SubjectAccessReview asks whether the caller may create finetunejobs (403 before anything is read), then the
files are looked up in the caller's namespace with its credentials read as the caller (400 naming
`training_file`/`validation_file` for a file that is missing or failed its check), and only then is the
FineTuneJob created, in one call, as the caller. A refusal at any step leaves nothing behind.

Cancel, pause and resume (docs/openai-api.md):
- cancel sets `spec.suspend: true` and `spec.serving.enabled: false` and the annotation
  `api.finetune.dev/cancelled-at`. Suspend, not delete: the training pods stop (the trainer checkpoints on
  SIGTERM), no model is published, and the job stays listed as `cancelled` with its events, as on OpenAI;
  `kubectl delete ftj <id>` removes it with its outputs' record. A cancelled job cannot be resumed.
- pause is `spec.suspend: true` (the CRD's meaning: pods stopped, resumable from the last checkpoint); resume
  is `spec.suspend: false`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from finetune_trainer.finetuning_api import file_store, job_objects, job_view, jobs, result_files
from finetune_trainer.finetuning_api.auth import authorize, in_thread
from finetune_trainer.finetuning_api.bodies import JOB_BODY_LIMIT, read_json
from finetune_trainer.finetuning_api.caller import Caller, caller_of
from finetune_trainer.finetuning_api.catalog import Catalog, catalog_at
from finetune_trainer.finetuning_api.config import ApiConfig
from finetune_trainer.finetuning_api.errors import ApiError
from finetune_trainer.finetuning_api.file_objects import files_of

MAX_LIMIT = 1000
ACTIVE = ("validating_files", "queued", "running")


def storage_of(config: ApiConfig) -> dict[str, str | bool]:
    """`spec.storage` of an API job: the files store, with the namespace's credentials Secret (the same keys).
    `etagIsMd5: false` only where the chart says the store's ETags are not MD5s (`api.files.etagIsMd5`)."""
    storage: dict[str, str | bool] = {"credentialsSecret": config.credentials_secret}
    if config.s3_endpoint:
        storage["endpoint"] = config.s3_endpoint
    if config.s3_region:
        storage["region"] = config.s3_region
    if not config.s3_etag_md5:
        storage["etagIsMd5"] = False
    return storage


def job_target(config: ApiConfig, namespace: str, name: str, request: jobs.CreateRequest) -> jobs.JobTarget:
    validation = request.validation_file
    return jobs.JobTarget(
        namespace=namespace,
        name=name,
        training_uri=file_store.file_uri(config, namespace, request.training_file),
        validation_uri=file_store.file_uri(config, namespace, validation) if validation else None,
        output_uri=f"s3://{config.bucket}/{result_files.job_folder(namespace, name)}",
        storage=storage_of(config),
    )


def check_files(config: ApiConfig, caller: Caller, request: jobs.CreateRequest) -> None:
    """The training (and validation) file exists in the caller's namespace and passed its upload check."""
    wanted = [("training_file", request.training_file)]
    if request.validation_file:
        wanted.append(("validation_file", request.validation_file))
    for param, file_id in wanted:
        if not file_store.FILE_ID.match(file_id):
            raise ApiError(400, f"invalid {param}: {file_id!r} is not a file id", param=param, code="invalid_value")
    objects = files_of(config, caller)
    for param, file_id in wanted:
        try:
            stored = objects.head(file_id)
        except ApiError as error:
            if error.status == 404:
                raise ApiError(
                    400, f"invalid {param}: no file {file_id} in project {caller.namespace}", param=param,
                    code="invalid_file",
                ) from None  # fmt: skip
            raise
        if stored.status != "processed":
            raise ApiError(
                400,
                f"{param} {file_id} did not pass its check ({stored.status}): {stored.status_details or ''}".rstrip(),
                param=param,
                code="invalid_file",
            )


def _config(request: Request) -> ApiConfig:
    config = request.app.state.config
    assert isinstance(config, ApiConfig)
    return config


def _limit(params: Mapping[str, str], default: int) -> int:
    raw = params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"limit {raw!r} must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return int(raw)


def _page(data: list[dict[str, Any]], has_more: bool) -> Response:
    return JSONResponse({"object": "list", "data": data, "has_more": has_more})


def _check_params(request: Request, allowed: set[str]) -> None:
    for key in request.query_params:
        if key not in allowed and not (key.startswith("metadata[") and "metadata" in allowed):
            raise ApiError(400, f"Unknown query parameter: '{key}'", param=key, code="unknown_parameter")


def job_routes(config: ApiConfig, catalog: Catalog | None = None) -> list[BaseRoute]:
    """The routes, closed over the catalog (read once at start-up from `config.catalog_path` when not given)."""
    catalog = catalog if catalog is not None else catalog_at(config.catalog_path)

    async def create(request: Request) -> Response:
        body = await read_json(request, JOB_BODY_LIMIT)
        parsed = jobs.parse_create(body)
        entry = catalog.require(parsed.model)
        caller = caller_of(request)
        kube = request.app.state.kube()
        await in_thread(lambda: authorize(kube.service, caller, "create"))
        await in_thread(lambda: check_files(config, caller, parsed))
        for attempt in range(3):  # a name drawn twice (100 random bits) is a 409: draw again
            manifest = jobs.job_manifest(
                parsed, entry, job_target(config, caller.namespace, jobs.new_job_name(), parsed)
            )
            try:
                created = await in_thread(lambda m=manifest: job_objects.create_job(caller, m))  # type: ignore[misc]
                break
            except ApiError as error:
                if error.status != 409 or attempt == 2:
                    raise
        return JSONResponse(job_view.to_openai_job(created))

    async def list_jobs(request: Request) -> Response:
        _check_params(request, {"after", "limit", "metadata"})
        params = request.query_params
        wanted = {key[len("metadata[") : -1]: value for key, value in params.items() if key.startswith("metadata[")}
        caller = caller_of(request)
        objects = await in_thread(lambda: job_objects.list_jobs(caller))
        chosen = job_view.sort_jobs(obj for obj in objects if job_view.matches_metadata(obj, wanted))
        page, more = job_view.page(chosen, job_view.job_id, params.get("after"), _limit(params, 20))
        return _page([job_view.to_openai_job(obj) for obj in page], more)

    async def retrieve(request: Request) -> Response:
        _check_params(request, set())
        caller = caller_of(request)
        name = str(request.path_params["job_id"])
        return JSONResponse(job_view.to_openai_job(await in_thread(lambda: job_objects.get_job(caller, name))))

    async def change(request: Request, decide: Any) -> Response:
        caller = caller_of(request)
        name = str(request.path_params["job_id"])
        updated = await in_thread(lambda: job_objects.update_with_retry(caller, name, decide))
        return JSONResponse(job_view.to_openai_job(updated))

    async def cancel(request: Request) -> Response:
        return await change(request, cancel_patch)

    async def pause(request: Request) -> Response:
        return await change(request, pause_patch)

    async def resume(request: Request) -> Response:
        return await change(request, resume_patch)

    async def events(request: Request) -> Response:
        _check_params(request, {"after", "limit"})
        caller = caller_of(request)
        name = str(request.path_params["job_id"])
        obj = await in_thread(lambda: job_objects.get_job(caller, name))
        kube_events = await in_thread(lambda: job_objects.job_events(caller, obj))
        listed = job_view.job_events(obj, kube_events)
        params = request.query_params
        page, more = job_view.page(listed, lambda e: e["id"], params.get("after"), _limit(params, 20))
        return _page(page, more)

    async def checkpoints(request: Request) -> Response:
        _check_params(request, {"after", "limit"})
        caller = caller_of(request)
        name = str(request.path_params["job_id"])
        obj = await in_thread(lambda: job_objects.get_job(caller, name))
        params = request.query_params
        listed = job_view.job_checkpoints(obj)
        page, more = job_view.page(listed, lambda c: c["id"], params.get("after"), _limit(params, 10))
        data: dict[str, Any] = {"object": "list", "data": page, "has_more": more}
        data["first_id"] = page[0]["id"] if page else None
        data["last_id"] = page[-1]["id"] if page else None
        return JSONResponse(data)

    base = "/v1/fine_tuning/jobs"
    return [
        Route(base, create, methods=["POST"]),
        Route(base, list_jobs, methods=["GET"]),
        Route(base + "/{job_id}", retrieve, methods=["GET"]),
        Route(base + "/{job_id}/cancel", cancel, methods=["POST"]),
        Route(base + "/{job_id}/pause", pause, methods=["POST"]),
        Route(base + "/{job_id}/resume", resume, methods=["POST"]),
        Route(base + "/{job_id}/events", events, methods=["GET"]),
        Route(base + "/{job_id}/checkpoints", checkpoints, methods=["GET"]),
    ]


def cancel_patch(obj: Mapping[str, Any], now: int | None = None) -> dict[str, Any]:
    """Stop the job for good (see the module docstring); a finished or cancelled job cannot be cancelled."""
    state = job_view.openai_status(obj)
    if state not in ACTIVE:
        raise ApiError(400, f"Job {job_view.job_id(obj)} is already {state}: it cannot be cancelled",
                       param="fine_tuning_job_id", code="invalid_state")  # fmt: skip
    at = int(time.time()) if now is None else now
    return {
        "metadata": {"annotations": {jobs.A_CANCELLED_AT: str(at)}},
        "spec": {"suspend": True, "serving": {"enabled": False}},
    }


def pause_patch(obj: Mapping[str, Any]) -> dict[str, Any]:
    state = job_view.openai_status(obj)
    if state not in ACTIVE or job_view.is_paused(obj):
        what = "paused" if job_view.is_paused(obj) else state
        raise ApiError(400, f"Job {job_view.job_id(obj)} is {what}: only a running or queued job can be paused",
                       param="fine_tuning_job_id", code="invalid_state")  # fmt: skip
    return {"spec": {"suspend": True}}


def resume_patch(obj: Mapping[str, Any]) -> dict[str, Any]:
    if not job_view.is_paused(obj):
        state = job_view.openai_status(obj)
        raise ApiError(400, f"Job {job_view.job_id(obj)} is {state}, not paused: only a paused job can be resumed",
                       param="fine_tuning_job_id", code="invalid_state")  # fmt: skip
    return {"spec": {"suspend": False}}
