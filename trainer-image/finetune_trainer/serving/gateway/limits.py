"""What the gateway checks and changes in a request body before vLLM sees it, pure: the model it names and the
`max_tokens` it may generate, and how many choices (`n`, `best_of`) it may ask for.

Why here and not left to vLLM: vLLM's chat route generates up to the whole context when a request names no
`max_tokens` (a completion: 16), and accepts any explicit value the context holds; one request could then hold a
sequence slot for minutes. The gateway gives a chat request without one `defaultMaxTokens` (our engine's rule),
a completion without one OpenAI's 16, and refuses an explicit value over the ceiling (400 naming the field).
`n` and `best_of` multiply the generation work of one request the same way, so they get our engine's ceiling
(protocol.MAX_N): a request over it is refused by name, not passed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_trainer.serving.server.protocol import MAX_N, APIError, bad_request

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
COMPLETION_DEFAULT = 16
"""OpenAI's (and vLLM's) `max_tokens` of a completion that names none."""


@dataclass(frozen=True)
class TokenLimits:
    default_max_tokens: int = 256
    """A chat request without `max_tokens`/`max_completion_tokens` generates at most this many tokens."""
    max_tokens_limit: int = 4096
    """No request may ask for more (400)."""


def model_of(body: Any) -> str:
    """The model a request names, or a 400 naming the field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    return model


def bounded(path: str, body: dict[str, Any], limits: TokenLimits) -> dict[str, Any]:
    """`body` with its token budget made explicit and within the ceiling (a new dict; the input is not changed)."""
    fields = ("max_completion_tokens", "max_tokens") if path == CHAT else ("max_tokens",)
    out = dict(body)
    named = [field for field in fields if out.get(field) is not None]
    for field in named:
        value = out[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"'{field}' must be a positive integer", field)
        if value > limits.max_tokens_limit:
            message = f"'{field}' is {value}; this server generates at most {limits.max_tokens_limit} tokens a request"
            raise APIError(400, message, "invalid_request_error", field, "max_tokens_too_large")
    if not named:
        out["max_tokens"] = limits.default_max_tokens if path == CHAT else COMPLETION_DEFAULT
    for field in ("n", "best_of"):
        value = out.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"'{field}' must be a positive integer", field)
        if value > MAX_N:
            message = f"'{field}' is {value}; this server returns at most {MAX_N} choices a request"
            raise bad_request(message, field)
    return out
