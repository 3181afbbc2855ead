"""One request as the engine's worker thread carries it: its state, its handle, and how a chosen token advances it.

Why apart from `engine`: this is the per-sequence bookkeeping (text streamed or held, stop strings, the token
budget, the closing event); the Engine decides what runs in which batch and drives the model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from finetune_trainer.serving.server.decoding import TextStream
from finetune_trainer.serving.server.events import Failed, Finished, SamplingParams, Sink, TextDelta, TokenLogprob


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    stream: TextStream
    generator: torch.Generator | None
    incremental: bool = True
    held: list[str] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    adapter: str | None = None  # the peft adapter (internal name) the sequence runs with; None: the base
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens whose text is not yet sent
    constraint: Any = None  # the sequence's constrained-decoding state (`constraints.Constraint`), or None


@dataclass
class Classification:
    rows: list[list[int]]
    callback: Callable[[list[list[float]] | Failed], None]


def base_of(model: Any) -> Any:
    """The transformers model under a peft wrapper (whose forward takes **kwargs only)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class RequestHandle:
    """Lets the HTTP side abandon a request whose client went away."""

    def __init__(self, sequence: Sequence) -> None:
        self._sequence = sequence

    def cancel(self) -> None:
        self._sequence.cancelled = True


def has_padding(batch: list[Sequence]) -> bool:
    """Whether a freshly prefilled batch has padding; without, decode steps need no attention mask
    (the plain causal path is the cheaper one)."""
    return len({len(s.prompt_ids) + len(s.generated) for s in batch}) > 1


def advance(
    sequence: Sequence, token: int, eos_token_ids: Collection[int], logprob: TokenLogprob | None = None
) -> None:
    """Feed one chosen token (and its logprob, when asked for) to a sequence; emit its text; finish it when a
    limit is reached. A token's logprob travels with the first delta that carries its text."""
    if sequence.cancelled:
        sequence.done = True
        return
    if token in eos_token_ids:
        finish(sequence, "stop")
        return
    sequence.generated.append(token)
    if sequence.constraint is not None:
        sequence.constraint.accept(token)
    if logprob is not None:
        sequence.logprobs.append(logprob)
    delta = sequence.stream.push(token)
    if delta and sequence.incremental:
        sequence.sink(TextDelta(delta, tuple(sequence.logprobs)))
        sequence.logprobs.clear()
    elif delta:
        sequence.held.append(delta)
    if sequence.stream.stopped:
        finish(sequence, "stop")
    elif len(sequence.generated) >= sequence.params.max_tokens:
        finish(sequence, "length")


def finish(sequence: Sequence, reason: Literal["stop", "length"]) -> None:
    rest = "".join(sequence.held) + sequence.stream.finish()
    if rest or sequence.logprobs:
        sequence.sink(TextDelta(rest, tuple(sequence.logprobs)))
        sequence.logprobs.clear()
    sequence.done = True
    sequence.sink(Finished(reason, len(sequence.prompt_ids), len(sequence.generated)))
