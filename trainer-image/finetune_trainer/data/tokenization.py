"""Tokenization with `datasets` (batched, fast tokenizer) and the loss mask for causal LM.

Why offsets instead of tokenizing pieces separately: tokenizing prompt and completion apart changes how
the boundary is split (and duplicates BOS). We render the whole example once, tokenize it once with
`return_offsets_mapping`, and mark as targets only the tokens whose characters fall in the completion or
in a learned assistant turn (including the end-of-turn marker the chat template appends, so the model
learns to stop). Everything else gets label -100, so no loss is computed on prompts, system, user or tool
turns, nor on assistant turns the data excludes (OpenAI's `weight: 0`). How a format becomes a completion
or a conversation is `finetune_trainer.data.formats`; here only the two renderings and their masks live.
The chat template (rendering, the default template) is `data.chat_template`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid, ModelInvalid
from finetune_trainer.data.chat_template import check_template, render_chat
from finetune_trainer.data.formats.base import Conversation

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def mask_targets(offsets: Sequence[tuple[int, int]], ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    labels = []
    for (start, end), token in zip(offsets, ids, strict=True):
        inside = end > start and any(start < s_end and end > s_start for s_start, s_end in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return labels


def _kind(schema: str) -> str:
    from finetune_trainer.data.formats import FORMATS

    return FORMATS[schema].kind


def causal_lm_batch(tokenizer: Any, schema: str, max_length: int) -> Any:
    """A `datasets.map(batched=True)` function: examples -> input_ids + labels (untrained tokens masked).

    Also a `truncated` flag per example (text left out at `max_length`), for the data summary.
    """
    eos = tokenizer.eos_token_id
    kind = _kind(schema)

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        count = len(next(iter(batch.values())))
        texts: list[str] = []
        spans: list[list[tuple[int, int]]] = []
        for i in range(count):
            if kind == "messages":
                conversation = Conversation.from_example({"conversation": batch["conversation"][i]})
                text, turn_spans = render_chat(
                    tokenizer,
                    [t.template_message() for t in conversation.turns],
                    [t.learn for t in conversation.turns],
                    conversation.tools,
                )
            else:
                prompt, completion = batch["prompt"][i], batch["completion"][i]
                text, turn_spans = prompt + completion, [(len(prompt), len(prompt) + len(completion))]
            texts.append(text)
            spans.append(turn_spans)
        add_eos = kind != "messages" and eos is not None
        encoded = tokenizer(
            texts,
            add_special_tokens=kind != "messages",
            truncation=True,
            max_length=max_length - (1 if add_eos else 0),
            return_offsets_mapping=True,
        )
        out_ids, out_labels, truncated = [], [], []
        for ids, offsets, turn_spans, text in zip(
            encoded["input_ids"], encoded["offset_mapping"], spans, texts, strict=True
        ):
            labels = mask_targets(offsets, ids, turn_spans)
            complete = not text.strip() or any(end >= len(text.rstrip()) for _, end in offsets)
            if add_eos and complete:
                ids, labels = [*ids, eos], [*labels, eos]
            out_ids.append(list(ids))
            out_labels.append(labels)
            truncated.append(not complete)
        return {"input_ids": out_ids, "labels": out_labels, "truncated": truncated}

    return tokenize


def classification_batch(tokenizer: Any, max_length: int) -> Any:
    """A `datasets.map(batched=True)` function: text + label id -> input_ids, attention_mask, labels."""

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded = dict(tokenizer(batch["text"], truncation=True, max_length=max_length, return_offsets_mapping=True))
        offsets = encoded.pop("offset_mapping")
        encoded["truncated"] = [
            bool(text.strip()) and not any(end >= len(text.rstrip()) for _, end in spans)
            for text, spans in zip(batch["text"], offsets, strict=True)
        ]
        encoded["labels"] = batch["label_id"]
        return encoded

    return tokenize


def cache_key(examples: Sequence[dict[str, Any]], tokenizer: Any, schema: str, max_length: int) -> str:
    """A fingerprint of everything tokenization depends on (the data, the vocabulary, the template)."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [
                CACHE_VERSION,
                schema,
                max_length,
                getattr(tokenizer, "chat_template", None),
                tokenizer.name_or_path,
                len(tokenizer),
            ],
            default=str,
        ).encode()
    )
    for example in examples:
        digest.update(json.dumps(example, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


CACHE_VERSION = 3
"""Bumped when the tokenized layout changes, so an earlier attempt's copy is not reused by mistake."""


@dataclass(frozen=True)
class TokenStats:
    """What tokenization did to one split, for the data summary (`validate`, metrics.json)."""

    records: int
    """Examples kept for training or evaluation."""
    tokens: int
    """Their tokens (after truncation)."""
    truncated: int
    """Examples cut at maxSeqLength (kept when a target token is left)."""
    dropped: int
    """Examples left without any target token after truncation (not used)."""

    def to_json(self) -> dict[str, int]:
        return {"records": self.records, "tokens": self.tokens, "truncated": self.truncated, "dropped": self.dropped}


def tokenize_split(
    examples: list[dict[str, Any]],
    tokenizer: Any,
    schema: str,
    max_length: int,
    cache_dir: Path | None,
    name: str,
) -> Any:
    """Tokenize one split (see `tokenize_with_stats`); the tokenized dataset only."""
    return tokenize_with_stats(examples, tokenizer, schema, max_length, cache_dir, name)[0]


def tokenize_with_stats(
    examples: list[dict[str, Any]],
    tokenizer: Any,
    schema: str,
    max_length: int,
    cache_dir: Path | None,
    name: str,
    origins: Sequence[str] | None = None,
) -> tuple[Any, TokenStats]:
    """Tokenize one split with `datasets` (batched), reusing an on-disk copy from an earlier attempt.

    `examples` are normalised examples of the format `schema` (`finetune_trainer.data.formats`); `origins`,
    when given, lets a conversation the chat template cannot render be reported with its line.
    Examples left without any target token (e.g. truncated before the completion) are dropped, since
    they would add compute and no signal (counted and logged); a split left empty is a user error.
    """
    import datasets

    if not getattr(tokenizer, "is_fast", False):
        raise ModelInvalid(
            "the base model's tokenizer has no fast (Rust) version (tokenizer.json); "
            "the trainer needs one for offsets and speed"
        )
    kind = _kind(schema)
    target = None
    if cache_dir is not None:
        target = cache_dir / f"{name}-{cache_key(examples, tokenizer, schema, max_length)}"
        if (target / "dataset_info.json").exists() and (target / "fto_stats.json").exists():
            log.info("%s: reusing tokenized data from %s", name, target)
            stats = TokenStats(**json.loads((target / "fto_stats.json").read_text()))
            return datasets.load_from_disk(str(target)), stats
    where = origins or [f"dataset {name} record {i + 1}" for i in range(len(examples))]
    if kind == "messages":
        check_template(tokenizer, examples, where)
    if kind == "preference":
        from finetune_trainer.data.pairs import check_pairs  # pairs builds on this module's masks

        check_pairs(tokenizer, examples, where)
    tokenized, stats = _tokenize(examples, tokenizer, schema, kind, max_length, name)
    if target is not None:
        tokenized.save_to_disk(str(target))
        (target / "fto_stats.json").write_text(json.dumps(stats.to_json()))
    return tokenized, stats


def _tokenize(
    examples: list[dict[str, Any]], tokenizer: Any, schema: str, kind: str, max_length: int, name: str
) -> tuple[Any, TokenStats]:
    """The batched `datasets` map, then the examples without a target token dropped (causal LM)."""
    import datasets

    dataset = datasets.Dataset.from_list(examples)
    if kind == "classification":
        fn = classification_batch(tokenizer, max_length)
    elif kind == "preference":
        from finetune_trainer.data.pairs import pair_batch

        fn = pair_batch(tokenizer, max_length)
    else:
        fn = causal_lm_batch(tokenizer, schema, max_length)
    tokenized = dataset.map(
        fn, batched=True, batch_size=512, remove_columns=dataset.column_names, desc=f"tokenizing {name}"
    )
    truncated = sum(tokenized["truncated"])
    tokenized = tokenized.remove_columns("truncated")
    before = len(tokenized)
    if kind == "preference":
        from finetune_trainer.data.pairs import trainable

        tokenized = tokenized.filter(trainable)
        if len(tokenized) < before:
            log.warning(
                "%s: dropped %d pair(s) with no answer token left on a side, or the same tokens on both sides, "
                "after truncation to %d tokens (their prompt is too long for maxSeqLength)",
                name,
                before - len(tokenized),
                max_length,
            )
    elif kind != "classification":
        tokenized = tokenized.filter(lambda row: any(x != IGNORE_INDEX for x in row["labels"][1:]))
        if len(tokenized) < before:
            log.warning(
                "%s: dropped %d example(s) with no target token left after truncation to %d tokens",
                name,
                before - len(tokenized),
                max_length,
            )
    if truncated:
        log.warning("%s: %d example(s) cut at maxSeqLength %d tokens", name, truncated, max_length)
    if len(tokenized) == 0:
        raise DatasetInvalid(
            f"dataset {name}: empty split: no example has a target token within maxSeqLength {max_length}"
        )
    tokens = sum(len(ids) for ids in tokenized["input_ids"])
    stats = TokenStats(len(tokenized), tokens, truncated, before - len(tokenized))
    return tokenized, stats
