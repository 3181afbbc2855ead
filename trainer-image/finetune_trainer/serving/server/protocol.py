"""The OpenAI wire format: request bodies, response bodies and the error shape.

Why: clients are the official OpenAI SDKs and tools built on them, so field names, defaults and error
bodies follow https://platform.openai.com/docs/api-reference exactly where we support a feature, and a
feature we do not support (n > 1, logprobs, best_of) is refused with a 400 naming the parameter rather
than silently ignored. Parameters that only tune sampling in ways we do not implement (presence and
frequency penalties, user) are accepted and ignored, as vLLM and others do, so ordinary clients work.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    n: int = 1
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    logprobs: Any = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 4:
            raise bad_request("at most 4 stop sequences are allowed", "stop")
        return tuple(stop for stop in stops if stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def check_supported(self) -> None:
        if self.n != 1:
            raise bad_request(f"n={self.n} is not supported: this server generates one choice (n=1)", "n")
        if self.logprobs not in (None, False):
            raise bad_request("logprobs are not supported by this server", "logprobs")
        self.stop_strings()


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, 1):
            raise bad_request("best_of is not supported by this server", "best_of")
        if self.echo:
            raise bad_request("echo is not supported by this server", "echo")
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt]
        if len(prompts) > 1 and isinstance(prompts[0], str):
            raise bad_request("one prompt per request: batch prompts are not supported", "prompt")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if any(part.type != "text" for part in self.content):
            raise bad_request("only text content parts are supported", "messages")
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

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
