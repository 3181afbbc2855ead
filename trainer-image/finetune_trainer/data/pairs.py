"""Tokenizing preference pairs (`method.objective: dpo`): one row per pair, the chosen sequence then the rejected.

Why one row holding both sequences: the pair is the unit of everything downstream. The split and the
batch size count pairs, the collator (`training.preference.PairCollator`) flattens a batch's pairs into one
padding-free row of 2 x batch sequences (position ids restarting per sequence, as the SFT path does), so the
chosen and rejected answers go through one forward pass, and the memory plan reads the pair's length. Each
sequence is the prompt and one reply rendered with the chat template (`render_chat`), tokenized once with
offsets; only the reply's tokens (and the end-of-turn marker the template adds) are targets, as for SFT.

Truncation at maxSeqLength applies to each sequence: a reply cut short is counted (`truncated`); a pair
left with no target token on either side (its prompt is as long as maxSeqLength), or whose two sides are
the same tokens after the cut (they differed only past it), is dropped, counted and logged, never silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.chat_template import render_chat
from finetune_trainer.data.formats.base import PreferencePair
from finetune_trainer.data.tokenization import IGNORE_INDEX, mask_targets


def _render(tokenizer: Any, prompt: list[dict[str, str]], reply: list[dict[str, str]]) -> tuple[str, list[Any]]:
    learn = [False] * len(prompt) + [True] * len(reply)
    return render_chat(tokenizer, [*prompt, *reply], learn)


def check_pairs(tokenizer: Any, examples: Sequence[dict[str, Any]], origins: Sequence[str]) -> None:
    """Refuse pairs the chat template cannot render (an unsupported role, alternation rules), naming the line."""
    for example, origin in zip(examples, origins, strict=True):
        pair = PreferencePair.from_example(example)
        for side in ("chosen", "rejected"):
            try:
                _, spans = _render(tokenizer, pair.prompt, getattr(pair, side))
            except Exception as error:  # jinja errors, raise_exception() in templates
                raise DatasetInvalid(
                    f"{origin}: the base model's chat template cannot render this pair's {side} side: {error}"
                ) from None
            if not spans:
                raise DatasetInvalid(f"{origin}: the chat template renders no text of the {side} answer")


def pair_batch(tokenizer: Any, max_length: int) -> Any:
    """A `datasets.map(batched=True)` function: pairs -> input_ids, labels (chosen then rejected), chosen_length,
    and `truncated` (either side cut at `max_length`)."""

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        texts: list[str] = []
        spans: list[list[tuple[int, int]]] = []
        for i in range(len(batch["prompt"])):
            pair = PreferencePair.from_example({k: batch[k][i] for k in ("prompt", "chosen", "rejected")})
            for reply in (pair.chosen, pair.rejected):
                text, reply_spans = _render(tokenizer, pair.prompt, reply)
                texts.append(text)
                spans.append(reply_spans)
        encoded = tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=max_length, return_offsets_mapping=True
        )
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "chosen_length": [], "truncated": []}
        sides = []
        for ids, offsets, reply_spans, text in zip(
            encoded["input_ids"], encoded["offset_mapping"], spans, texts, strict=True
        ):
            complete = any(end >= len(text.rstrip()) for _, end in offsets)
            sides.append((list(ids), mask_targets(offsets, ids, reply_spans), complete))
        for (c_ids, c_labels, c_done), (r_ids, r_labels, r_done) in zip(sides[0::2], sides[1::2], strict=True):
            out["input_ids"].append(c_ids + r_ids)
            out["labels"].append(c_labels + r_labels)
            out["chosen_length"].append(len(c_ids))
            out["truncated"].append(not (c_done and r_done))
        return out

    return tokenize


def trainable(row: dict[str, Any]) -> bool:
    """A tokenized pair with a target token on each side, whose two sides differ (else it teaches nothing)."""
    split = row["chosen_length"]
    ids, labels = row["input_ids"], row["labels"]
    chosen, rejected = labels[1:split], labels[split + 1 :]
    if not any(x != IGNORE_INDEX for x in chosen) or not any(x != IGNORE_INDEX for x in rejected):
        return False
    return bool(ids[:split] != ids[split:])
