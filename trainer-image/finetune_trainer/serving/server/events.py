"""What a request asks of the engine and what it gets back: sampling parameters, the events streamed to the
request's sink (text, finished, failed), and what a loaded adapter reports.

Why apart from the engine: the routes (`api`) build the parameters and relay the events; these are plain
frozen values, so the HTTP side and the tests use them without reading the engine's worker loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of generation (already validated against the model's context)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to the logits before sampling (OpenAI's `logit_bias`)."""
    logprobs: int | None = None
    """None: no logprobs; k >= 0: each chosen token's logprob and its k most likely alternatives."""
    constraint: Any = None
    """A factory of the sequence's constrained-decoding state (`constraints.Constraint`), or None."""

    def adjusts_logits(self) -> bool:
        """Whether the logits are changed before sampling (penalties, bias, a constraint)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias or self.constraint)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log probability under the model, and the `top` alternatives (id, logprob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    """The tokens whose text this delta carries (when the request asked for logprobs)."""


@dataclass(frozen=True)
class Finished:
    reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


Event = TextDelta | Finished | Failed
Sink = Callable[[Event], None]
"""Called on the worker thread; must not block (the app hands events to its event loop)."""


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded adapter: the folder it came from and the run it is (both reported by /v1/models)."""

    path: str
    run: int | None = None
