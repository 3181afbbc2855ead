"""OpenAI's models and inference: `GET /v1/models` (the catalog's base models and the caller's served
fine-tuned models), `GET/DELETE /v1/models/{model}`, and `POST /v1/chat/completions` / `/v1/completions` for a
fine-tuned model, proxied (streaming too) to the endpoint that serves it.

Why a proxy and not a redirect: the client keeps one `base_url` and one key (its Kubernetes token), as with
OpenAI. The proxy finds the job from the model name (`ft:<model>:<namespace>:<suffix>:<job id>`, its namespace
the caller's, else 404 `model_not_found` as for a model that does not exist), reads the endpoint's URL from
`status.endpoint.url` (its own Deployment's Service or its ModelServer's, written by the operator) and the key
from the Secret `status.serving.apiKeySecret` names, as the caller (RBAC on that Secret decides), then forwards
the body with the served model name (`status.endpoint.model`) and that key. Responses come back as the engine
wrote them, with `model` set back to the fine-tuned model's name (each chunk of a stream too).

Only a serving port inside the job's own namespace is called: the URL must be
`http://<service>.<job's namespace>.svc[.cluster.local]:8000/v1`. The namespace is the object's own, never one
the status names: the status is writable by the tenant, the API's pods are admitted by every serving
NetworkPolicy, and so a status naming another namespace would make the API a way into another tenant's endpoints.
A job on a ModelServer of another namespace is therefore not proxied (502 naming why); its server's own endpoint
answers it directly.

Base models are listed (they can be fine-tuned) but not served here: chatting with one is 404
`model_not_found`, which says so.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from finetune_trainer.finetuning_api import job_objects, job_view
from finetune_trainer.finetuning_api.auth import in_thread
from finetune_trainer.finetuning_api.bodies import INFERENCE_BODY_LIMIT, read_json
from finetune_trainer.finetuning_api.caller import Caller, caller_of
from finetune_trainer.finetuning_api.catalog import Catalog
from finetune_trainer.finetuning_api.errors import ApiError

UPSTREAM_TRANSPORT: httpx.AsyncBaseTransport | None = None
"""How the proxy reaches endpoints: None, the network (Service names resolve through the cluster's DNS). Tests
that run the service outside a cluster set a transport that sends a Service name to a local server."""
SERVING_PORT = 8000
"""The port every serving Service of the operator listens on (its own engine, the vLLM gateway, a ModelServer)."""
UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)
SERVICE_HOST = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?$"
)


def model_not_found(name: str) -> ApiError:
    return ApiError(
        404, f"The model '{name}' does not exist or you do not have access to it.", param="model",
        code="model_not_found",
    )  # fmt: skip


def served(obj: Mapping[str, Any]) -> bool:
    """A fine-tuned model answers: the job succeeded, serving is on and the operator reported the endpoint."""
    endpoint = (obj.get("status") or {}).get("endpoint") or {}
    enabled = ((obj.get("spec") or {}).get("serving") or {}).get("enabled")
    return bool(enabled and endpoint.get("url") and job_view.openai_status(obj) == "succeeded")


def base_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "system"}


def fine_tuned_model(obj: Mapping[str, Any]) -> dict[str, Any]:
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    view = job_view.to_openai_job(obj)
    return {
        "id": job_view.fine_tuned_model_name(obj),
        "object": "model",
        "created": view["finished_at"] or view["created_at"],
        "owned_by": namespace,
    }


def allowed_upstream(url: str, obj: Mapping[str, Any]) -> str:
    """The endpoint URL, when it is the serving port of a Service in the job's own namespace; else 502."""
    parts = urlsplit(url)
    match = SERVICE_HOST.match(parts.hostname or "")
    namespace = (obj.get("metadata") or {}).get("namespace")
    if (
        parts.scheme != "http"
        or parts.username
        or match is None
        or match.group("ns") != namespace
        or parts.port != SERVING_PORT
        or parts.path.rstrip("/") != "/v1"
    ):
        raise ApiError(502, f"the model's endpoint is not the serving port of a Service in namespace {namespace} "
                       "(a job on another namespace's ModelServer is answered by that server's endpoint): it is "
                       "not called", code="bad_endpoint")  # fmt: skip
    return url.rstrip("/")


def resolve(caller: Caller, name: str) -> dict[str, Any]:
    """The served job of a fine-tuned model name in the caller's namespace, else 404 model_not_found."""
    ref = job_view.parse_fine_tuned_model(name)
    if ref is None or ref[0] != caller.namespace:
        raise model_not_found(name)
    try:
        obj = job_objects.get_job(caller, ref[1])
    except ApiError as error:
        if error.status == 404:
            raise model_not_found(name) from None
        raise
    if job_view.fine_tuned_model_name(obj) != name or not served(obj):
        raise model_not_found(name)
    return obj


def _rewrite(payload: Any, name: str) -> Any:
    if isinstance(payload, dict) and "model" in payload:
        payload["model"] = name
    return payload


async def _sse(lines: AsyncIterator[str], name: str) -> AsyncIterator[bytes]:
    """A server-sent event stream, each `data: {...}` chunk's model set to the fine-tuned model's name."""
    async for line in lines:
        if line.startswith("data: {"):
            with contextlib.suppress(ValueError):  # not JSON: passed on as it came
                line = "data: " + json.dumps(_rewrite(json.loads(line[6:]), name))
        yield (line + "\n").encode()


def model_routes(catalog: Catalog) -> list[BaseRoute]:
    client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, transport=UPSTREAM_TRANSPORT)

    async def list_models(request: Request) -> Response:
        caller = caller_of(request)
        try:
            objects = await in_thread(lambda: job_objects.list_jobs(caller))
        except ApiError as error:
            if error.status != 403:
                raise
            objects = []  # no rights on finetunejobs: the catalog is still the caller's to see
        mine = [fine_tuned_model(obj) for obj in job_view.sort_jobs(objects) if served(obj)]
        data = [base_model(entry.name) for entry in catalog.entries] + mine
        return JSONResponse({"object": "list", "data": data})

    async def retrieve(request: Request) -> Response:
        name = str(request.path_params["model"])
        if catalog.get(name) is not None:
            return JSONResponse(base_model(name))
        caller = caller_of(request)
        obj = await in_thread(lambda: resolve(caller, name))
        return JSONResponse(fine_tuned_model(obj))

    async def delete(request: Request) -> Response:
        """Unpublish: `spec.serving.enabled: false` (the operator removes the server or the adapter; the model
        stays in object storage and the job stays `succeeded`)."""
        name = str(request.path_params["model"])
        if catalog.get(name) is not None:
            raise ApiError(403, f"{name} is a base model of the catalog: it cannot be deleted", param="model",
                           code="permission_denied")  # fmt: skip
        caller = caller_of(request)

        def unpublish(obj: dict[str, Any]) -> dict[str, Any]:
            if job_view.fine_tuned_model_name(obj) != name or not served(obj):
                raise model_not_found(name)
            return {"spec": {"serving": {"enabled": False}}}

        def run() -> None:
            ref = job_view.parse_fine_tuned_model(name)
            if ref is None or ref[0] != caller.namespace:
                raise model_not_found(name)
            try:
                job_objects.update_with_retry(caller, ref[1], unpublish)
            except ApiError as error:
                if error.status == 404:
                    raise model_not_found(name) from None
                raise

        await in_thread(run)
        return JSONResponse({"id": name, "object": "model", "deleted": True})

    async def proxy(request: Request, path: str) -> Response:
        body = await read_json(request, INFERENCE_BODY_LIMIT)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ApiError(400, "Missing required parameter: 'model'", param="model", code="missing_required_parameter")
        name = body["model"]
        caller = caller_of(request)
        if catalog.get(name) is not None:
            raise ApiError(404, f"The base model '{name}' is offered for fine-tuning, not served here: use a "
                           "fine_tuned_model", param="model", code="model_not_found")  # fmt: skip
        obj = await in_thread(lambda: resolve(caller, name))
        key = await in_thread(lambda: job_objects.endpoint_key(caller, obj))
        endpoint = obj["status"]["endpoint"]
        url = allowed_upstream(str(endpoint["url"]), obj) + path
        forwarded = {**body, "model": endpoint.get("model") or job_view.job_id(obj)}
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        upstream_request = client.build_request("POST", url, json=forwarded, headers=headers)
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as error:
            raise ApiError(502, f"the model's endpoint did not answer ({type(error).__name__}): try again",
                           code="upstream_unavailable") from None  # fmt: skip
        media = upstream.headers.get("content-type", "application/json")
        if media.startswith("text/event-stream"):
            return StreamingResponse(
                _sse(upstream.aiter_lines(), name), status_code=upstream.status_code, media_type="text/event-stream",
                background=BackgroundTask(upstream.aclose),
            )  # fmt: skip
        try:
            raw = await upstream.aread()
        finally:
            await upstream.aclose()
        try:
            payload = _rewrite(json.loads(raw), name) if upstream.status_code < 400 else json.loads(raw)
        except ValueError:
            return Response(raw, status_code=upstream.status_code, media_type=media)
        return JSONResponse(payload, status_code=upstream.status_code)

    async def chat(request: Request) -> Response:
        return await proxy(request, "/chat/completions")

    async def completions(request: Request) -> Response:
        return await proxy(request, "/completions")

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve, methods=["GET"]),
        Route("/v1/models/{model:path}", delete, methods=["DELETE"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
