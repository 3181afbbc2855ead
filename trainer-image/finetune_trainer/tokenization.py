"""Tokenization with `datasets` (batched, fast tokenizer) and the loss mask for causal LM.

Why offsets instead of tokenizing pieces separately: tokenizing prompt and completion apart changes how
the boundary is split (and duplicates BOS). We render the whole example once, tokenize it once with
`return_offsets_mapping`, and mark as targets only the tokens whose characters fall in the completion or
in an assistant turn (including the end-of-turn marker the chat template appends, so the model learns to
stop). Everything else gets label -100, so no loss is computed on prompts, system or user turns.
A tokenizer without a chat template gets a small ChatML-like default, saved with the model so the server
renders prompts exactly as in training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune_trainer.errors import DatasetInvalid, ModelInvalid

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + (eos_token or '') + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give the tokenizer the default chat template when it has none; True when one was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    if not messages:
        if not generation_prompt:
            return ""
        try:
            return str(tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True))
        except Exception:  # some templates refuse an empty conversation
            return ""
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt))


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    A turn's span is the text the template adds between "conversation so far + generation prompt" and
    "conversation including this turn". Templates that are not prefix-consistent fall back to the span
    of the turn's content found in the full text.
    """
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True)
        upto = _render(tokenizer, messages[: i + 1], False)
        if full.startswith(upto) and upto.startswith(before) and len(upto) > len(before):
            spans.append((len(before), len(upto)))
            cursor = len(upto)
        else:
            start = full.find(message["content"], cursor)
            if start >= 0:
                spans.append((start, start + len(message["content"])))
                cursor = start + len(message["content"])
    return full, spans


def _mask(offsets: Sequence[tuple[int, int]], ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    labels = []
    for (start, end), token in zip(offsets, ids, strict=True):
        inside = end > start and any(start < s_end and end > s_start for s_start, s_end in spans)
        labels.append(token if inside else IGNORE_INDEX)
    return labels


def causal_lm_batch(tokenizer: Any, schema: str, max_length: int) -> Any:
    """A `datasets.map(batched=True)` function: examples -> input_ids + labels (prompt tokens masked)."""
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        count = len(next(iter(batch.values())))
        texts: list[str] = []
        spans: list[list[tuple[int, int]]] = []
        for i in range(count):
            if schema == "chat":
                text, turn_spans = render_chat(tokenizer, batch["messages"][i])
            elif schema == "prompt-completion":
                prompt, completion = batch["prompt"][i], batch["completion"][i]
                text, turn_spans = prompt + completion, [(len(prompt), len(prompt) + len(completion))]
            else:
                text = batch["text"][i]
                turn_spans = [(0, len(text))]
            texts.append(text)
            spans.append(turn_spans)
        add_eos = schema != "chat" and eos is not None
        encoded = tokenizer(
            texts,
            add_special_tokens=schema != "chat",
            truncation=True,
            max_length=max_length - (1 if add_eos else 0),
            return_offsets_mapping=True,
        )
        out_ids, out_labels = [], []
        for ids, offsets, turn_spans, text in zip(
            encoded["input_ids"], encoded["offset_mapping"], spans, texts, strict=True
        ):
            labels = _mask(offsets, ids, turn_spans)
            if add_eos and (not offsets or offsets[-1][1] >= len(text.rstrip())):
                ids, labels = [*ids, eos], [*labels, eos]
            out_ids.append(list(ids))
            out_labels.append(labels)
        return {"input_ids": out_ids, "labels": out_labels}

    return tokenize


def classification_batch(tokenizer: Any, max_length: int) -> Any:
    """A `datasets.map(batched=True)` function: text + label id -> input_ids, attention_mask, labels."""

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded = dict(tokenizer(batch["text"], truncation=True, max_length=max_length))
        encoded["labels"] = batch["label_id"]
        return encoded

    return tokenize


def cache_key(examples: Sequence[dict[str, Any]], tokenizer: Any, schema: str, max_length: int) -> str:
    """A fingerprint of everything tokenization depends on (the data, the vocabulary, the template)."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [
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


def tokenize_split(
    examples: list[dict[str, Any]],
    tokenizer: Any,
    schema: str,
    max_length: int,
    cache_dir: Path | None,
    name: str,
) -> Any:
    """Tokenize one split with `datasets` (batched), reusing an on-disk copy from an earlier attempt.

    Examples left without any target token (e.g. truncated before the completion) are dropped, since
    they would add compute and no signal; a split left empty is a user error.
    """
    import datasets

    if not getattr(tokenizer, "is_fast", False):
        raise ModelInvalid(
            "the base model's tokenizer has no fast (Rust) version (tokenizer.json); "
            "the trainer needs one for offsets and speed"
        )
    target = None
    if cache_dir is not None:
        target = cache_dir / f"{name}-{cache_key(examples, tokenizer, schema, max_length)}"
        if (target / "dataset_info.json").exists():
            log.info("%s: reusing tokenized data from %s", name, target)
            return datasets.load_from_disk(str(target))
    dataset = datasets.Dataset.from_list(examples)
    if schema == "classification":
        fn = classification_batch(tokenizer, max_length)
    else:
        fn = causal_lm_batch(tokenizer, schema, max_length)
    tokenized = dataset.map(
        fn, batched=True, batch_size=512, remove_columns=dataset.column_names, desc=f"tokenizing {name}"
    )
    if schema != "classification":
        before = len(tokenized)
        tokenized = tokenized.filter(lambda row: any(x != IGNORE_INDEX for x in row["labels"][1:]))
        if len(tokenized) < before:
            log.warning(
                "%s: dropped %d example(s) with no target token left after truncation to %d tokens",
                name,
                before - len(tokenized),
                max_length,
            )
    if len(tokenized) == 0:
        raise DatasetInvalid(
            f"dataset {name}: empty split: no example has a target token within maxSeqLength {max_length}"
        )
    if target is not None:
        tokenized.save_to_disk(str(target))
    return tokenized
