"""The gateway's app: `create_app(settings)`, our server's guard around a handful of routes that forward to vLLM.

What a request meets, in order (the guard is `serving.server.guard.RequestGuard`, the one our engine runs):
1. /healthz (liveness) answers from the gateway itself, /readyz and /health ask vLLM's /health over loopback on a
   client of their own (its own connections, a short timeout), so no number of long requests can block a probe;
2. every /v1 request: the key from the headers (401), `maxRequests` (429), the body up to `maxBodyBytes` (413)
   within 30 s (408); vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter are 404 here, always;
3. the routes: POST /v1/completions and /v1/chat/completions (the model the body names must be one the caller's
   key reaches, else 404 `model_not_found`; `max_tokens` bounded by `limits.bounded`), GET /v1/models (vLLM's
   list, less what the key does not reach); any other path is 404;
4. the request goes to vLLM with vLLM's own key (the server's, when it has one) in place of the caller's, and no
   header of the caller's but its content type: vLLM never sees a tenant key or a forwarded address. The answer
   is relayed as it arrives (server-sent events stream through), and a client that leaves closes the upstream
   request, which vLLM then aborts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from finetune_trainer.serving.gateway.limits import CHAT, COMPLETIONS, TokenLimits, bounded, model_of
from finetune_trainer.serving.keyfile import WatchedKeys
from finetune_trainer.serving.server.guard import RequestGuard, access_of
from finetune_trainer.serving.server.protocol import APIError

log = logging.getLogger(__name__)

READY_TIMEOUT = 3.0
"""Seconds /readyz waits for vLLM's /health (the probe's own timeout is longer)."""
PARSE_IN_THREAD = 64 * 1024
"""Bodies larger than this are parsed off the event loop."""
RELAYED_HEADERS = ("content-type",)


@dataclass(frozen=True)
class GatewaySettings:
    upstream: str
    """vLLM's base URL on loopback (http://127.0.0.1:PORT)."""
    api_key: str | None = None
    """The server's key: the admin key here, and vLLM's own key upstream. None: authentication off."""
    adapters_file: Path | None = None
    """A shared server's copy of adapters.json (the sidecar's): its `keySha256` entries are the tenant keys."""
    reserved: frozenset[str] = frozenset()
    """Model names no tenant key reaches (the base model of a shared server)."""
    max_body_bytes: int = 1 << 20
    max_requests: int = 64
    limits: TokenLimits = field(default_factory=TokenLimits)


def not_found(model: str) -> APIError:
    """What a model the key does not reach gets, whether it exists or not (so its existence is not revealed)."""
    return APIError(404, f"The model `{model}` does not exist.", "invalid_request_error", "model", "model_not_found")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class Upstream:
    """The two loopback clients: one for requests (as many connections as requests may be in progress), one for
    the probes (never waiting behind a request for a connection)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        limits = httpx.Limits(max_connections=settings.max_requests, max_keepalive_connections=settings.max_requests)
        # no read timeout: a long generation is vLLM's to bound (max_tokens is); connecting is loopback
        timeout = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=30.0)
        self.requests = httpx.AsyncClient(base_url=settings.upstream, headers=headers, limits=limits, timeout=timeout)
        self.probes = httpx.AsyncClient(base_url=settings.upstream, timeout=READY_TIMEOUT)

    async def close(self) -> None:
        await self.requests.aclose()
        await self.probes.aclose()

    async def ready(self) -> tuple[bool, str]:
        try:
            answer = await self.probes.get("/health")
        except httpx.HTTPError as error:
            return False, f"vLLM is not answering: {type(error).__name__}"
        return answer.status_code == 200, f"vLLM /health: {answer.status_code}"

    async def relay(self, method: str, path: str, body: bytes | None) -> Response:
        """Send one request to vLLM and relay its answer as it arrives."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = self.requests.build_request(method, path, content=body, headers=headers)
        try:
            upstream = await self.requests.send(request, stream=True)
        except httpx.HTTPError as error:
            log.warning("%s %s: vLLM unreachable: %s", method, path, error)
            return error_response(APIError(503, "the model server is not ready: retry shortly", "server_error"))
        relayed = {k: v for k, v in upstream.headers.items() if k.lower() in RELAYED_HEADERS}

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:  # done, or the client left (the task is cancelled): vLLM sees the connection close
                with anyio.CancelScope(shield=True):  # a cancelled task still closes it
                    await upstream.aclose()

        return StreamingResponse(chunks(), status_code=upstream.status_code, headers=relayed)


async def _json_body(request: Request) -> Any:
    raw = await request.body()  # already read (and bounded) by the guard
    try:
        if len(raw) > PARSE_IN_THREAD:
            return await asyncio.to_thread(json.loads, raw)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise APIError(400, f"the request body is not JSON: {error}", "invalid_request_error") from error


def create_app(settings: GatewaySettings) -> RequestGuard:
    """The gateway (see the module docstring), vLLM at `settings.upstream`: the routes inside the guard."""
    upstream = Upstream(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await upstream.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, detail = await upstream.ready()
        return JSONResponse({"status": "ready" if ready else "loading", "detail": detail}, 200 if ready else 503)

    async def models(request: Request) -> Response:
        access = access_of(request.scope)
        try:
            answer = await upstream.requests.get("/v1/models")
        except httpx.HTTPError:
            return error_response(APIError(503, "the model server is not ready: retry shortly", "server_error"))
        if answer.status_code != 200:
            return Response(answer.content, answer.status_code, media_type="application/json")
        listed = answer.json()
        listed["data"] = [card for card in listed.get("data") or [] if access.allows(str(card.get("id")))]
        return JSONResponse(listed)

    async def generate(request: Request) -> Response:
        try:
            body = await _json_body(request)
            model = model_of(body)
            if not access_of(request.scope).allows(model):
                raise not_found(model)
            out = bounded(request.url.path, body, settings.limits)
        except APIError as error:
            return error_response(error)
        return await upstream.relay("POST", request.url.path, json.dumps(out).encode())

    async def unknown(request: Request) -> Response:
        return error_response(APIError(404, "Not Found", "invalid_request_error"))

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/health", readyz, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route(COMPLETIONS, generate, methods=["POST"]),
        Route(CHAT, generate, methods=["POST"]),
        Route("/{path:path}", unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    ]
    return RequestGuard(
        Starlette(routes=routes, lifespan=lifespan),  # type: ignore[arg-type]
        keys=WatchedKeys(settings.api_key, settings.adapters_file, settings.reserved).current,
        max_body_bytes=settings.max_body_bytes,
        max_requests=settings.max_requests,
        admin_port=None,
        admin_token_file=Path("/nonexistent"),
    )
