"""Token-level pieces of generation: incremental detokenisation with stop strings, and sampling.

Why separate: these are pure functions of token ids and logits, the part of a server most easily got
wrong in small ways (a multi-byte character split across tokens, a stop string split across tokens,
text streamed and then "taken back"), so they are tested without a model or HTTP.

`TextStream` is the TextIteratorStreamer idea with offsets (as in text-generation-inference): decode only
a short window of recent ids, hold back text while it ends in an incomplete character (U+FFFD) or
could still become a stop string, and never emit anything that a later token would retract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    """Turns the tokens of one generated sequence into text deltas, cut at the first stop string."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text: str | None = ""
        self.text = ""
        """The complete text so far (after a stop string is found: up to, not including, it)."""
        self._emitted = 0
        self.stopped = False
        """True once a stop string appeared; push() must not be called afterwards."""

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final with it (often "", never retracted later)."""
        self._ids.append(token_id)
        self._advance(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """The end of generation (length or end-of-sequence): return everything still held back."""
        if not self.stopped:
            self._advance(final=True)
        return self._release(final=True)

    def _advance(self, final: bool) -> None:
        if self._prefix_text is None:  # decoded once per window, not once per token
            self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        prefix_text = self._prefix_text
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith(REPLACEMENT_CHAR) and not final):
            return  # an incomplete character: wait for the next token
        self.text += new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = None
        self._cut_at_stop()

    def _cut_at_stop(self) -> None:
        found = [pos for pos in (self.text.find(s, self._emitted) for s in self._stop) if pos >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True

    def _held_back(self) -> int:
        """How many trailing characters might be the start of a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self.text) - self._emitted), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, final: bool) -> str:
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        if end <= self._emitted:
            return ""
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta


def filter_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of one probability vector: keep the smallest set of tokens whose mass >= top_p."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # the top token always stays
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum()


def choose_next_tokens(
    logits: torch.Tensor,
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """The next token of every row of a [batch, vocab] logits tensor, each row with its own sampling.

    Temperature 0 is greedy (argmax); otherwise softmax(logits / temperature), nucleus-filtered, sampled
    with the row's generator (seeded per request, so a `seed` reproduces a completion).
    """
    chosen = logits.argmax(dim=-1).tolist()
    for row, temperature in enumerate(temperatures):
        if temperature <= 0.0:
            continue
        probs = torch.softmax(logits[row].float().cpu() / temperature, dim=-1)  # CPU generators
        probs = filter_top_p(probs, top_ps[row])
        chosen[row] = int(torch.multinomial(probs, 1, generator=generators[row]).item())
    return [int(token) for token in chosen]


def adjust_logits(
    logits: torch.Tensor,
    generated: Sequence[int],
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: Sequence[tuple[int, float]] = (),
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """One row of logits as the request's sampling sees them (a new tensor; `logits` is not changed).

    OpenAI's definitions: `logit_bias` is added to the named tokens; each token already generated loses
    `frequency_penalty` per time it occurs plus `presence_penalty` once (over the completion so far, as vLLM
    counts them); `allowed` (a bool mask from constrained decoding) leaves only the tokens it marks.
    """
    row = logits.float().clone()
    if logit_bias:
        ids = torch.tensor([token for token, _ in logit_bias], dtype=torch.long, device=row.device)
        row[ids] += torch.tensor([bias for _, bias in logit_bias], dtype=row.dtype, device=row.device)
    if generated and (presence_penalty or frequency_penalty):
        seen = torch.tensor(list(generated), dtype=torch.long, device=row.device)
        counts = torch.bincount(seen, minlength=row.numel())[: row.numel()].to(row.dtype)
        row -= frequency_penalty * counts + presence_penalty * (counts > 0).to(row.dtype)
    if allowed is not None:
        row = row.masked_fill(~allowed.to(row.device), float("-inf"))
    return row


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log probability of `token` under one row of raw model logits, and the `top` most likely tokens.

    Why the raw logits: a logprob says what the model thinks of the token, the number evaluation harnesses and
    rerankers compare across requests; sampling settings (temperature, penalties, bias) do not change it (vLLM's
    default, `raw_logprobs`)."""
    logps = torch.log_softmax(logits.float(), dim=-1)
    chosen = float(logps[token].item())
    if top <= 0:
        return chosen, []
    values, ids = torch.topk(logps, min(top, logps.numel()))
    return chosen, [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
