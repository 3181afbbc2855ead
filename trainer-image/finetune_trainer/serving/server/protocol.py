"""The OpenAI wire format: request bodies, response bodies and the error shape.

Why: clients are the official OpenAI SDKs and tools built on them, so field names, defaults and error
bodies follow https://platform.openai.com/docs/api-reference exactly where we support a feature. Every
parameter of OpenAI's /v1/chat/completions and /v1/completions is either honoured or refused with a 400
naming it (`param`); nothing is accepted and ignored. A parameter this server does not implement is still a
declared field (so the refusal names it and says why, `REFUSED`), and a field OpenAI does not define is
refused as unknown (`extra="forbid"`; `app` words the error). The table of decisions is docs/serving.md.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_N = 16
"""The most choices one request may ask for (n, or prompts x n): each is a sequence in the engine's batch."""


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


REFUSED: dict[str, str] = {
    "audio": "audio output is not supported: this server generates text",
    "function_call": "OpenAI deprecated function_call: use tool_choice",
    "functions": "OpenAI deprecated functions: describe them in tools",
    "metadata": "this server stores no completions to attach metadata to",
    "moderation": "this server runs no moderation",
    "prediction": "predicted outputs are not supported",
    "prompt_cache_key": "this server keeps no prompt cache to key",
    "prompt_cache_options": "this server keeps no prompt cache",
    "prompt_cache_retention": "this server keeps no prompt cache",
    "reasoning_effort": "the served model is not a reasoning model",
    "safety_identifier": "this server keeps no per-user record (there is no abuse monitoring to inform)",
    "store": "this server stores no completions",
    "suffix": "insertion (suffix) is not supported",
    "user": "this server keeps no per-user record (there is no abuse monitoring to inform)",
    "verbosity": "verbosity is a reasoning-model control this model does not have",
    "web_search_options": "this server has no web search",
}
"""OpenAI parameters this server declares only to refuse them by name, and why (docs/serving.md)."""

_NEUTRAL: dict[str, tuple[Any, ...]] = {"store": (False,), "metadata": ({},)}
"""Values of refused parameters that ask for nothing (OpenAI's own defaults), so they are not refused."""


def refuse_declared(body: BaseModel) -> None:
    """400 for the first refused parameter the request set to something other than its neutral value."""
    for name in body.model_fields_set:
        if name in REFUSED:
            value = getattr(body, name)
            if value is None or value in _NEUTRAL.get(name, ()):
                continue
            raise bad_request(f"{name} is not supported: {REFUSED[name]}", name, "unsupported_parameter")


class _Closed(BaseModel):
    """A request object that refuses keys OpenAI does not define."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Closed):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _Request(_Closed):
    model: str
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: Any = None
    # every refused parameter is declared here or in a subclass and listed in REFUSED

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    def sampling_temperature(self) -> float:
        return 1.0 if self.temperature is None else self.temperature

    def sampling_top_p(self) -> float:
        return 1.0 if self.top_p is None else self.top_p

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 4:
            raise bad_request("at most 4 stop sequences are allowed", "stop")
        return tuple(stop for stop in stops if stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def bias(self, vocab: int) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs, each id checked against the vocabulary."""
        pairs = []
        for key, value in (self.logit_bias or {}).items():
            try:
                token = int(key)
            except ValueError:
                raise bad_request(f"logit_bias keys are token ids, got {key!r}", "logit_bias") from None
            if not 0 <= token < vocab:
                raise bad_request(f"logit_bias token id {token} is not in [0, {vocab})", "logit_bias")
            if not -100.0 <= value <= 100.0:
                raise bad_request(f"logit_bias values must be in [-100, 100], got {value}", "logit_bias")
            pairs.append((token, float(value)))
        return tuple(pairs)

    def check_supported(self) -> None:
        refuse_declared(self)
        self.stop_strings()
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream=true", "stream_options")
        if self.stream_options is not None and self.stream_options.include_obfuscation:
            raise bad_request(
                "include_obfuscation is not supported: this server pads no stream chunks",
                "stream_options.include_obfuscation",
                "unsupported_parameter",
            )


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: Any = None

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: one per string or token-id list."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise bad_request("prompt must not be empty", "prompt")
        ids = [item for item in prompt if isinstance(item, int)]
        if len(ids) == len(prompt):
            return [ids]
        if any(isinstance(item, int) for item in prompt):
            raise bad_request("prompt mixes token ids with other prompts", "prompt")
        return [item for item in prompt if not isinstance(item, int)]

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, 1) and self.best_of != self.choices:
            raise bad_request(
                "best_of is supported only equal to n (every candidate is returned): ranking candidates is not",
                "best_of",
                "unsupported_parameter",
            )
        if self.echo and self.logprobs is not None:
            raise bad_request(
                "echo with logprobs is not supported: this server does not score prompt tokens",
                "echo",
                "unsupported_parameter",
            )
        if len(self.prompts()) * self.choices > MAX_N:
            raise bad_request(f"at most {MAX_N} choices per request (prompts x n)", "n")


class TextPart(_Closed):
    type: Literal["text"]
    text: str


class ImagePart(_Closed):
    """A non-text part: declared so that it is refused by name, not as an unknown shape."""

    type: Literal["image_url", "input_audio", "file", "refusal"]
    image_url: Any = None
    input_audio: Any = None
    file: Any = None
    refusal: Any = None


class FunctionCall(_Closed):
    name: str = Field(min_length=1)
    arguments: str


class ToolCall(_Closed):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Closed):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    audio: Any = None
    function_call: Any = None

    def check(self, where: str) -> None:
        """Refuse, naming `where` (`messages[i]`), what this message carries that cannot reach the model."""
        if self.role == "function":
            raise bad_request("the 'function' role is deprecated by OpenAI: use 'tool'", f"{where}.role")
        if isinstance(self.content, list):
            for index, part in enumerate(self.content):
                if not isinstance(part, TextPart):
                    raise bad_request(
                        f"only text content parts are supported, got {part.type!r}", f"{where}.content[{index}]"
                    )
        for name in ("audio", "function_call", "refusal"):
            if getattr(self, name) is not None:
                raise bad_request(f"a message's {name!r} is not supported", f"{where}.{name}", "unsupported_parameter")
        if self.tool_calls is not None and self.role != "assistant":
            raise bad_request("tool_calls belong to assistant messages", f"{where}.tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise bad_request("a tool message needs the tool_call_id it answers", f"{where}.tool_call_id")
        if self.tool_call_id is not None and self.role != "tool":
            raise bad_request("tool_call_id belongs to tool messages", f"{where}.tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise bad_request("content is required (only an assistant message with tool_calls may omit it)", where)

    def openai_dict(self) -> dict[str, Any]:
        """The message as OpenAI's chat format writes it (what the trainer's `chat` format reads)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role}
        if isinstance(self.content, list):
            message["content"] = [{"type": "text", "text": part.text} for part in self.content]  # type: ignore[union-attr]
        else:
            message["content"] = self.content
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls is not None:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionDefinition(_Closed):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Closed):
    type: Literal["function", "custom"]
    function: FunctionDefinition | None = None
    custom: Any = None


class NamedFunction(_Closed):
    name: str


class NamedToolChoice(_Closed):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Closed):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Closed):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    """Kept as sent (key order included: templates render the list with `tojson`, as the trainer renders the
    data's); each is checked against `Tool` by `function_tools()`."""
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    audio: Any = None
    function_call: Any = None
    functions: Any = None
    metadata: Any = None
    moderation: Any = None
    prediction: Any = None
    prompt_cache_key: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    reasoning_effort: Any = None
    safety_identifier: Any = None
    store: bool | None = None
    verbosity: Any = None
    web_search_options: Any = None

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wanted_logprobs(self) -> int | None:
        """How many alternatives per token (0: the chosen token's logprob only); None: no logprobs."""
        if not self.logprobs:
            return None
        return self.top_logprobs or 0

    def check_supported(self) -> None:
        super().check_supported()
        for index, message in enumerate(self.messages):
            message.check(f"messages[{index}]")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs requires logprobs=true", "top_logprobs")
        if self.modalities is not None and self.modalities != ["text"]:
            raise bad_request("this server generates text only: modalities must be ['text']", "modalities")
        if self.service_tier not in (None, "auto", "default"):
            raise bad_request(
                f"service_tier {self.service_tier!r} is not offered: this server has one tier ('default')",
                "service_tier",
                "unsupported_parameter",
            )
        if self.tools is not None and not self.tools:
            raise bad_request("tools must not be an empty list: leave it out instead", "tools")
        self.function_tools()
        if self.tool_choice is not None and not self.tools:
            raise bad_request("tool_choice requires tools", "tool_choice")
        if self.parallel_tool_calls is not None and not self.tools:
            raise bad_request("parallel_tool_calls requires tools", "parallel_tool_calls")
        if self.choices > MAX_N:
            raise bad_request(f"at most {MAX_N} choices per request", "n")

    def function_tools(self) -> list[FunctionDefinition]:
        """The function definitions of `tools`, each checked (a 400 names the tool and its field)."""
        functions = []
        for index, raw in enumerate(self.tools or []):
            try:
                tool = Tool.model_validate(raw)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join([f"tools[{index}]", *(str(part) for part in first["loc"])])
                raise bad_request(f"{where}: {first['msg']}", where) from None
            if tool.type != "function" or tool.function is None:
                raise bad_request("only function tools are supported", f"tools[{index}]", "unsupported_parameter")
            functions.append(tool.function)
        return functions

    def tool_list(self) -> list[dict[str, Any]] | None:
        """The tools as sent: what the chat template renders (as the trainer renders the data's `tools`)."""
        return list(self.tools) if self.tools else None


class ClassifyRequest(_Closed):
    model: str
    input: str | list[str]

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise bad_request("input must not be empty", "input")
        if len(texts) > 256:
            raise bad_request("at most 256 inputs per request", "input")
        return texts


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(name: str, created: int, run: int | None) -> dict[str, Any]:
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "finetune-operator"}
    if run is not None:
        card["run"] = run
    return card
