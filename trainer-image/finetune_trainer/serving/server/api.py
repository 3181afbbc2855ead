"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions, /v1/classify.

Why this shape: a handler validates the request, turns it into prompt ids and sampling parameters,
hands it to the engine and relays the engine's events, either collected into one JSON body or as
server-sent events ending with `data: [DONE]` (what the OpenAI SDKs parse). The engine works on its own
thread; its events cross into the event loop through `call_soon_threadsafe`, so a slow client never
blocks generation, and a client that goes away cancels its sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from finetune_trainer.serving.auth import ALL, Access
from finetune_trainer.serving.server.engine import Engine
from finetune_trainer.serving.server.events import Event, Failed, Finished, SamplingParams, TextDelta
from finetune_trainer.serving.server.guard import access_of
from finetune_trainer.serving.server.metrics import ServerMetrics
from finetune_trainer.serving.server.prompts import encode_chat, encode_completion, longest_token, refuse_long_text
from finetune_trainer.serving.server.protocol import (
    APIError,
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    bad_request,
    model_card,
    new_id,
    now,
    usage,
)
from finetune_trainer.serving.server.state import ModelState

QUEUE_FACTOR = 16
"""Requests beyond this many batches' worth of waiting ones are refused (429) instead of queued for minutes."""


class _EventQueue:
    """The engine's sink for one request: events land in an asyncio queue of the request's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _prompt_limit(state: ModelState, context: int) -> int:
    """The most prompt tokens a request may have: serve.json's `maxPromptTokens`, at most the context less one."""
    configured = state.settings.config.max_prompt_tokens
    return min(configured, context - 1) if configured else context - 1


def _token_budget(
    requested: int | None, prompt_tokens: int, context: int, limit: int, default: int | None, param: str
) -> int:
    """How many tokens to generate: `requested` (at most what the context leaves), else `default` (capped the
    same way); refuses a prompt over `limit` tokens with a 400 naming the limit."""
    if prompt_tokens > limit:
        raise bad_request(
            f"the prompt has {prompt_tokens} tokens; this server's limit is {limit} prompt tokens (context {context})",
            param,
            "context_length_exceeded",
        )
    room = context - prompt_tokens
    if requested is None:
        return min(room, default) if default else room
    if requested > room:
        raise bad_request(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({requested}) exceeds the model's "
            f"context of {context} tokens",
            "max_tokens",
            "context_length_exceeded",
        )
    return requested


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Generation:
    """One request's run through the engine: relays events and keeps the metrics."""

    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics,
        ids: list[int],
        params: SamplingParams,
        stream: bool,
        adapter: str | None = None,
    ) -> None:
        if engine.waiting() >= QUEUE_FACTOR * engine.max_batch_size:
            raise APIError(429, "the server is at capacity: retry shortly", "server_error", None, "server_overloaded")
        self.metrics = metrics
        self.events = _EventQueue()
        self.finished: Finished | None = None
        self.handle = engine.submit(ids, params, self.events, incremental=stream, adapter=adapter)

    async def deltas(self) -> AsyncIterator[str]:
        """Text as it is generated; afterwards `self.finished` holds the reason and token counts."""
        self.metrics.in_flight.inc()
        try:
            while True:
                event = await self.events.queue.get()
                if isinstance(event, TextDelta):
                    yield event.text
                elif isinstance(event, Finished):
                    self.finished = event
                    self.metrics.count_tokens(event.prompt_tokens, event.completion_tokens)
                    return
                elif isinstance(event, Failed):
                    raise APIError(500, event.message, "server_error", None, None)
        finally:
            self.metrics.in_flight.dec()
            self.cancel_unless_finished()

    def cancel_unless_finished(self) -> None:
        if self.finished is None:
            self.handle.cancel()

    async def text(self) -> tuple[str, Finished]:
        parts = [delta async for delta in self.deltas()]
        assert self.finished is not None
        return "".join(parts), self.finished


def _stream(generation: _Generation, base: dict[str, Any], chat: bool, include_usage: bool) -> StreamingResponse:
    def chunk(delta: str | None, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            choice["delta"] = {} if delta is None else {"content": delta}
        else:
            choice["text"] = delta or ""
        body = {**base, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return body

    async def events() -> AsyncIterator[str]:
        try:
            if chat:
                first = chunk("", None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                yield _sse(first)
            async for delta in generation.deltas():
                yield _sse(chunk(delta, None))
        except APIError as error:
            yield _sse(error.body())
            return
        finally:
            generation.cancel_unless_finished()
        finished = generation.finished
        assert finished is not None
        yield _sse(chunk(None, finished.reason))
        if include_usage:
            totals = usage(finished.prompt_tokens, finished.completion_tokens)
            yield _sse({**base, "choices": [], "usage": totals})
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _generating_engine(state: ModelState, model: str, access: Access) -> Engine:
    engine = state.engine_for(model, access)
    if engine.loaded.task != "causal-lm":
        raise bad_request(f"'{model}' is a {engine.loaded.task} model: use /v1/classify", "model", "wrong_task")
    return engine


def _adapter_of(state: ModelState, model: str) -> str | None:
    """The adapter a request names (None: the served model itself)."""
    return None if model == state.settings.config.served_model_name else model


async def list_models(state: ModelState, access: Access = ALL) -> dict[str, Any]:
    """/v1/models: the served model, then a shared server's adapters; of those, what the caller's key reaches."""
    config = state.settings.config
    engine = state.engine_for(config.served_model_name)  # 503 while loading
    cards = []
    if access.allows(config.served_model_name):
        cards.append(model_card(config.served_model_name, state.created, config.run))
    for name, info in sorted(engine.adapters().items()):  # a shared server's adapters (vLLM's card shape)
        if not access.allows(name):
            continue
        card = model_card(name, state.created, info.run)
        cards.append({**card, "root": info.path, "parent": config.served_model_name})
    return {"object": "list", "data": cards}


async def complete(
    body: CompletionRequest, state: ModelState, metrics: ServerMetrics, access: Access = ALL
) -> JSONResponse | StreamingResponse:
    """/v1/completions: a prompt continued, as one body or a stream."""
    engine = _generating_engine(state, body.model, access)
    body.check_supported()
    tokenizer, context = engine.loaded.tokenizer, engine.loaded.context_length
    limit = _prompt_limit(state, context)
    if isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], str)):
        text = body.prompt if isinstance(body.prompt, str) else "".join(str(p) for p in body.prompt)
        refuse_long_text(tokenizer, len(text), limit, "prompt")
    ids = await asyncio.to_thread(encode_completion, tokenizer, body.prompt)  # off the event loop
    budget = _token_budget(
        body.max_tokens, len(ids), context, limit, state.settings.config.default_max_tokens, "prompt"
    )
    params = SamplingParams(budget, body.temperature, body.top_p, body.stop_strings(), body.seed)
    generation = _Generation(engine, metrics, ids, params, body.stream, _adapter_of(state, body.model))
    base = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": body.model}
    if body.stream:
        return _stream(generation, base, chat=False, include_usage=body.include_usage())
    text, finished = await generation.text()
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finished.reason}
    return JSONResponse(
        {**base, "choices": [choice], "usage": usage(finished.prompt_tokens, finished.completion_tokens)}
    )


async def chat_complete(
    body: ChatCompletionRequest, state: ModelState, metrics: ServerMetrics, access: Access = ALL
) -> JSONResponse | StreamingResponse:
    """/v1/chat/completions: the next assistant message, as one body or a stream."""
    engine = _generating_engine(state, body.model, access)
    body.check_supported()
    tokenizer, context = engine.loaded.tokenizer, engine.loaded.context_length
    limit = _prompt_limit(state, context)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    refuse_long_text(tokenizer, sum(len(m["content"]) for m in messages), limit, "messages")
    ids = await asyncio.to_thread(encode_chat, tokenizer, messages)  # off the event loop
    default = state.settings.config.default_max_tokens
    budget = _token_budget(body.token_budget(), len(ids), context, limit, default, "messages")
    params = SamplingParams(budget, body.temperature, body.top_p, body.stop_strings(), body.seed)
    generation = _Generation(engine, metrics, ids, params, body.stream, _adapter_of(state, body.model))
    created = now()
    if body.stream:
        base = {
            "id": new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
        }
        return _stream(generation, base, chat=True, include_usage=body.include_usage())
    text, finished = await generation.text()
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finished.reason,
    }
    return JSONResponse(
        {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [choice],
            "usage": usage(finished.prompt_tokens, finished.completion_tokens),
        }
    )


async def classify(
    body: ClassifyRequest, state: ModelState, metrics: ServerMetrics, access: Access = ALL
) -> dict[str, Any]:
    """/v1/classify: each text's label and class probabilities, on the engine's thread between decode steps."""
    engine = state.engine_for(body.model, access)
    loaded = engine.loaded
    if loaded.task != "sequence-classification":
        raise bad_request(
            f"'{body.model}' is a {loaded.task} model: use /v1/completions or /v1/chat/completions",
            "model",
            "wrong_task",
        )
    texts = body.texts()
    limit = loaded.context_length * longest_token(loaded.tokenizer)  # more is truncated away anyway
    rows = await asyncio.to_thread(
        lambda: [[int(i) for i in loaded.tokenizer.encode(text[:limit])][: loaded.context_length] for text in texts]
    )
    if any(not row for row in rows):
        raise bad_request("an input encodes to no tokens", "input")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[list[float]] | Failed] = loop.create_future()

    def settle(result: list[list[float]] | Failed) -> None:
        if not done.done():
            done.set_result(result)

    def deliver(result: list[list[float]] | Failed) -> None:  # called on the engine's thread
        loop.call_soon_threadsafe(settle, result)

    engine.classify(rows, deliver)
    result = await done
    if isinstance(result, Failed):
        raise APIError(500, result.message, "server_error", None, None)
    prompt_tokens = sum(len(row) for row in rows)
    metrics.count_tokens(prompt_tokens, 0)
    data = []
    for index, probabilities in enumerate(result):
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        data.append(
            {
                "index": index,
                "label": loaded.labels[best],
                "score": probabilities[best],
                "scores": dict(zip(loaded.labels, probabilities, strict=True)),
            }
        )
    return {
        "id": new_id("clf"),
        "object": "list",
        "created": now(),
        "model": body.model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def router(state: ModelState, metrics: ServerMetrics) -> APIRouter:
    """The /v1 routes over one model state; each route hands its request to the module function above."""
    routes = APIRouter(prefix="/v1")

    @routes.get("/models")
    async def models(request: Request) -> dict[str, Any]:
        return await list_models(state, access_of(request.scope))

    @routes.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        return await complete(body, state, metrics, access_of(request.scope))

    @routes.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        return await chat_complete(body, state, metrics, access_of(request.scope))

    @routes.post("/classify")
    async def classify_route(body: ClassifyRequest, request: Request) -> dict[str, Any]:
        return await classify(body, state, metrics, access_of(request.scope))

    return routes
