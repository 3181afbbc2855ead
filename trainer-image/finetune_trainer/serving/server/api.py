"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions, /v1/classify.

Why this shape: a handler validates the request, turns it into prompt ids and sampling parameters,
hands it to the engine and relays the engine's events, either collected into one JSON body or as
server-sent events ending with `data: [DONE]` (what the OpenAI SDKs parse). The engine works on its own
thread; its events cross into the event loop through `call_soon_threadsafe`, so a slow client never
blocks generation, and a client that goes away cancels its sequence.

A request becomes one engine sequence per choice (`n`, times the prompts of a completion request); their events
carry the choice's index. Chat requests with tools have their text split into content and `tool_calls`
(`tools`); forced tool choices and JSON response formats are constrained while decoding (`constraints`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from finetune_trainer.serving.auth import ALL, Access
from finetune_trainer.serving.server import constraints
from finetune_trainer.serving.server.constraints import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from finetune_trainer.serving.server.engine import Engine
from finetune_trainer.serving.server.events import Event, Failed, Finished, SamplingParams, TextDelta, TokenLogprob
from finetune_trainer.serving.server.guard import access_of
from finetune_trainer.serving.server.metrics import ServerMetrics
from finetune_trainer.serving.server.prompts import (
    chat_template,
    encode_chat,
    encode_completion,
    longest_token,
    refuse_long_text,
    template_messages,
    token_bytes,
)
from finetune_trainer.serving.server.protocol import (
    APIError,
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    NamedToolChoice,
    bad_request,
    model_card,
    new_id,
    now,
    usage,
)
from finetune_trainer.serving.server.state import ModelState
from finetune_trainer.serving.server.tools import ToolCallSplitter, template_calls_tools

QUEUE_FACTOR = 16
"""Requests beyond this many batches' worth of waiting ones are refused (429) instead of queued for minutes."""


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
    """One request's sequences (n choices, per prompt) run through the engine: relays their events, tagged with
    the choice's index, and keeps the metrics."""

    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics,
        runs: list[tuple[list[int], SamplingParams]],
        stream: bool,
        adapter: str | None = None,
    ) -> None:
        if engine.waiting() >= QUEUE_FACTOR * engine.max_batch_size:
            raise APIError(429, "the server is at capacity: retry shortly", "server_error", None, "server_overloaded")
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.finished: dict[int, Finished] = {}
        self.handles = [
            engine.submit(ids, params, self._sink(index), incremental=stream, adapter=adapter)
            for index, (ids, params) in enumerate(runs)
        ]

    def _sink(self, index: int) -> Any:
        def sink(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

        return sink

    async def deltas(self) -> AsyncIterator[tuple[int, TextDelta]]:
        """(choice index, delta) as generated; afterwards `self.finished` holds each choice's end."""
        self.metrics.in_flight.inc()
        try:
            while len(self.finished) < len(self.handles):
                index, event = await self.queue.get()
                if isinstance(event, TextDelta):
                    yield index, event
                elif isinstance(event, Finished):
                    self.finished[index] = event
                    self.metrics.count_tokens(event.prompt_tokens, event.completion_tokens)
                elif isinstance(event, Failed):
                    raise APIError(500, event.message, "server_error", None, None)
        finally:
            self.metrics.in_flight.dec()
            self.cancel_unless_finished()

    def cancel_unless_finished(self) -> None:
        for index, handle in enumerate(self.handles):
            if index not in self.finished:
                handle.cancel()

    async def collect(self) -> list[tuple[str, list[TokenLogprob], Finished]]:
        texts: list[list[str]] = [[] for _ in self.handles]
        logprobs: list[list[TokenLogprob]] = [[] for _ in self.handles]
        async for index, delta in self.deltas():
            texts[index].append(delta.text)
            logprobs[index].extend(delta.logprobs)
        return [("".join(texts[i]), logprobs[i], self.finished[i]) for i in range(len(self.handles))]

    def usage(self, prompts: list[int]) -> dict[str, int]:
        """Token counts: each distinct prompt once (n choices share it), every choice's completion."""
        return usage(sum(prompts), sum(f.completion_tokens for f in self.finished.values()))


def _token_text(tokenizer: Any, token: int) -> str:
    """A token as logprobs name it: its text, or (a piece of a multi-byte character) `bytes:\\xNN...`, as
    OpenAI writes such tokens, so that two different byte pieces never share a name."""
    text = str(tokenizer.decode([token], skip_special_tokens=False))
    if "\ufffd" not in text:
        return text
    return "bytes:" + "".join(f"\\x{byte:02x}" for byte in token_bytes(tokenizer, token))


def _chat_logprobs(tokenizer: Any, items: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: one entry per generated token, each with its `top_logprobs`."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {"token": _token_text(tokenizer, token), "logprob": logprob, "bytes": token_bytes(tokenizer, token)}

    content = [
        {**entry(item.token, item.logprob), "top_logprobs": [entry(t, lp) for t, lp in item.top]} for item in items
    ]
    return {"content": content, "refusal": None}


def _completion_logprobs(tokenizer: Any, items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """OpenAI's legacy completion `logprobs`: parallel lists; `text_offset` counts from the completion's start."""
    tokens = [_token_text(tokenizer, item.token) for item in items]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": [{_token_text(tokenizer, t): lp for t, lp in item.top} for item in items],
        "text_offset": offsets,
    }


def _streaming_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _generating_engine(state: ModelState, model: str, access: Access) -> Engine:
    engine = state.engine_for(model, access)
    if engine.loaded.task != "causal-lm":
        raise bad_request(f"'{model}' is a {engine.loaded.task} model: use /v1/classify", "model", "wrong_task")
    return engine


def _adapter_of(state: ModelState, model: str) -> str | None:
    """The adapter a request names (None: the served model itself)."""
    return None if model == state.settings.config.served_model_name else model


def _vocab_size(engine: Engine) -> int:
    """The width of the model's logits (at least the tokenizer's vocabulary)."""
    embeddings = engine.loaded.model.get_output_embeddings()
    width = int(embeddings.weight.shape[0]) if embeddings is not None else 0
    return max(width, len(engine.loaded.tokenizer))


def _params(
    body: ChatCompletionRequest | CompletionRequest, budget: int, engine: Engine, **extra: Any
) -> SamplingParams:
    return SamplingParams(
        budget,
        body.sampling_temperature(),
        body.sampling_top_p(),
        body.stop_strings(),
        body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=body.bias(_vocab_size(engine)),
        **extra,
    )


def _seeded(params: SamplingParams, index: int) -> SamplingParams:
    """The i-th of n choices: its own seed (seed + i), so seeded choices differ yet reproduce."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=params.seed + index)


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
    """/v1/completions: each prompt continued n times, as one body or a stream."""
    engine = _generating_engine(state, body.model, access)
    body.check_supported()
    tokenizer, context = engine.loaded.tokenizer, engine.loaded.context_length
    limit = _prompt_limit(state, context)
    prompts = body.prompts()
    for prompt in prompts:
        if isinstance(prompt, str):
            refuse_long_text(tokenizer, len(prompt), limit, "prompt")
    encoded = await asyncio.to_thread(lambda: [encode_completion(tokenizer, p) for p in prompts])  # off the loop
    default = state.settings.config.default_max_tokens
    runs = []
    for ids in encoded:
        budget = _token_budget(body.max_tokens, len(ids), context, limit, default, "prompt")
        params = _params(body, budget, engine, logprobs=body.logprobs)
        runs += [(ids, _seeded(params, index)) for index in range(body.choices)]
    echoes = [p if isinstance(p, str) else str(tokenizer.decode(p)) for p in prompts] if body.echo else None
    generation = _Generation(engine, metrics, runs, body.streaming, _adapter_of(state, body.model))
    base = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": body.model}
    prompt_tokens = [len(ids) for ids in encoded]

    def echo_of(index: int) -> str:
        return echoes[index // body.choices] if echoes else ""

    if body.streaming:
        include_usage = body.include_usage()

        async def events() -> AsyncIterator[str]:
            offsets = [0] * len(runs)
            started: set[int] = set()
            try:
                async for index, delta in generation.deltas():
                    text = delta.text
                    if index not in started:
                        started.add(index)
                        text = echo_of(index) + text
                    choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
                    if body.logprobs is not None:
                        choice["logprobs"] = _completion_logprobs(tokenizer, list(delta.logprobs), offsets[index])
                    offsets[index] += len(delta.text)
                    yield _sse({**base, "choices": [choice], **({"usage": None} if include_usage else {})})
            except APIError as error:
                yield _sse(error.body())
                return
            finally:
                generation.cancel_unless_finished()
            for index in range(len(runs)):
                last = {"index": index, "text": "" if index in started else echo_of(index), "logprobs": None}
                last["finish_reason"] = generation.finished[index].reason
                yield _sse({**base, "choices": [last], **({"usage": None} if include_usage else {})})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": generation.usage(prompt_tokens)})
            yield "data: [DONE]\n\n"

        return _streaming_response(events())
    results = await generation.collect()
    choices = []
    for index, (text, logprobs, finished) in enumerate(results):
        choice: dict[str, Any] = {
            "index": index,
            "text": echo_of(index) + text,
            "logprobs": None,
            "finish_reason": finished.reason,
        }
        if body.logprobs is not None:
            choice["logprobs"] = _completion_logprobs(tokenizer, logprobs, 0)
        choices.append(choice)
    return JSONResponse({**base, "choices": choices, "usage": generation.usage(prompt_tokens)})


class _ChatShape:
    """What a chat request asks of its output beyond text: tool calls to parse (and their constraint), or a JSON
    response format (its constraint)."""

    def __init__(self, body: ChatCompletionRequest, engine: Engine) -> None:
        self.names: set[str] = set()
        self.parse_tools = False
        self.forced = False
        self.constraint: Any = None
        tokenizer = engine.loaded.tokenizer
        functions = [function.model_dump(exclude_none=True) for function in body.function_tools()]
        choice = body.tool_choice if body.tool_choice is not None else ("auto" if functions else "none")
        fmt = body.response_format
        wants_json = fmt is not None and fmt.type != "text"
        if functions and choice != "none":
            if not template_calls_tools(chat_template(tokenizer)):
                raise bad_request(
                    f"this model's chat template has no {TOOL_CALL_OPEN} convention for tool calls, so calls in its "
                    "output cannot be recognised: use tool_choice 'none' or leave tools out",
                    "tool_choice",
                    "unsupported_parameter",
                )
            if wants_json:
                raise bad_request(
                    "response_format json_object/json_schema together with tool calling is not supported: set "
                    "tool_choice to 'none' or leave response_format out",
                    "response_format",
                    "unsupported_parameter",
                )
            self.names = {f["name"] for f in functions}
            self.parse_tools = True
            if isinstance(choice, NamedToolChoice):
                named = [f for f in functions if f["name"] == choice.function.name]
                if not named:
                    raise bad_request(
                        f"tool_choice names {choice.function.name!r}, which is not in tools", "tool_choice"
                    )
                self.forced, functions = True, named
            elif choice == "required":
                self.forced = True
            if self.forced:
                self.constraint = ("tool", functions)
        elif wants_json:
            assert fmt is not None
            if fmt.type == "json_schema":
                if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                    raise bad_request("json_schema needs a schema", "response_format.json_schema")
                self.constraint = ("schema", (fmt.json_schema.schema_, bool(fmt.json_schema.strict)))
            else:
                self.constraint = ("object", None)

    def factory(self, engine: Engine) -> Any:
        """The per-sequence constraint factory (compiled off the event loop by the caller), or None."""
        if self.constraint is None:
            return None
        loaded, width = engine.loaded, _vocab_size(engine)
        kind, value = self.constraint
        if kind == "tool":
            return constraints.tool_call(loaded.tokenizer, width, loaded.eos_token_ids, value)
        if kind == "schema":
            return constraints.json_schema(loaded.tokenizer, width, loaded.eos_token_ids, value[0], value[1])
        return constraints.json_object(loaded.tokenizer, width, loaded.eos_token_ids)

    def splitter(self) -> ToolCallSplitter | None:
        return ToolCallSplitter(self.names, self.forced) if self.parse_tools else None


async def chat_complete(
    body: ChatCompletionRequest, state: ModelState, metrics: ServerMetrics, access: Access = ALL
) -> JSONResponse | StreamingResponse:
    """/v1/chat/completions: the next assistant message (n of them), as one body or a stream."""
    engine = _generating_engine(state, body.model, access)
    body.check_supported()
    tokenizer, context = engine.loaded.tokenizer, engine.loaded.context_length
    limit = _prompt_limit(state, context)
    messages, tools = template_messages([m.openai_dict() for m in body.messages], body.tool_list())
    refuse_long_text(tokenizer, sum(len(str(m.get("content") or "")) for m in messages), limit, "messages")
    ids = await asyncio.to_thread(encode_chat, tokenizer, messages, tools)  # off the event loop
    shape = _ChatShape(body, engine)
    constraint = await asyncio.to_thread(shape.factory, engine)
    default = state.settings.config.default_max_tokens
    budget = _token_budget(body.token_budget(), len(ids), context, limit, default, "messages")
    params = _params(body, budget, engine, logprobs=body.wanted_logprobs(), constraint=constraint)
    if shape.parse_tools and body.parallel_tool_calls is False:  # one call at most: generation ends with it
        params = replace(params, stop=(*params.stop, TOOL_CALL_CLOSE))
    runs = [(ids, _seeded(params, index)) for index in range(body.choices)]
    generation = _Generation(engine, metrics, runs, body.streaming, _adapter_of(state, body.model))
    created, chat_id = now(), new_id("chatcmpl")
    if body.streaming:
        return _streaming_response(_chat_events(body, generation, shape, tokenizer, chat_id, created, len(ids)))
    results = await generation.collect()
    choices = []
    for index, (text, logprobs, finished) in enumerate(results):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        reason: str = finished.reason
        splitter = shape.splitter()
        if splitter is not None:
            content = splitter.push(text)
            rest, calls = splitter.finish()
            content += rest
            message["content"] = content or None
            if calls:
                message["tool_calls"] = [call.openai() for call in calls]
                reason = "tool_calls" if finished.reason == "stop" else reason
            else:
                message["content"] = content
        choice: dict[str, Any] = {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
        if body.logprobs:
            choice["logprobs"] = _chat_logprobs(tokenizer, logprobs)
        choices.append(choice)
    return JSONResponse(
        {
            "id": chat_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": generation.usage([len(ids)]),
        }
    )


async def _chat_events(
    body: ChatCompletionRequest,
    generation: _Generation,
    shape: _ChatShape,
    tokenizer: Any,
    chat_id: str,
    created: int,
    prompt_tokens: int,
) -> AsyncIterator[str]:
    """The chunks of a streamed chat completion: a role chunk per choice, content deltas (tool calls held until
    the choice ends, then sent as one `tool_calls` delta), a finish chunk per choice, usage, [DONE]."""
    base = {"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": body.model}
    include_usage = body.include_usage()
    count = len(generation.handles)
    splitters = [shape.splitter() for _ in range(count)]
    held: list[list[TokenLogprob]] = [[] for _ in range(count)]

    def chunk(index: int, delta: dict[str, Any], finish: str | None, logprobs: list[TokenLogprob] | None) -> str:
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if body.logprobs and logprobs is not None:
            choice["logprobs"] = _chat_logprobs(tokenizer, logprobs)
        return _sse({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

    try:
        for index in range(count):
            yield chunk(index, {"role": "assistant", "content": ""}, None, None)
        async for index, delta in generation.deltas():
            splitter = splitters[index]
            if splitter is None:
                yield chunk(index, {"content": delta.text}, None, list(delta.logprobs))
                continue
            held[index].extend(delta.logprobs)
            content = splitter.push(delta.text)
            if content:
                yield chunk(index, {"content": content}, None, held[index])
                held[index] = []
    except APIError as error:
        yield _sse(error.body())
        return
    finally:
        generation.cancel_unless_finished()
    for index in range(count):
        reason: str = generation.finished[index].reason
        splitter = splitters[index]
        if splitter is not None:
            rest, calls = splitter.finish()
            if calls:
                if rest:
                    yield chunk(index, {"content": rest}, None, None)
                tool_calls = [call.openai(position) for position, call in enumerate(calls)]
                yield chunk(index, {"tool_calls": tool_calls}, None, held[index])
                reason = "tool_calls" if reason == "stop" else reason
            elif rest or held[index]:
                yield chunk(index, {"content": rest}, None, held[index])
        yield chunk(index, {}, reason, None)
    if include_usage:
        yield _sse({**base, "choices": [], "usage": generation.usage([prompt_tokens])})
    yield "data: [DONE]\n\n"


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
