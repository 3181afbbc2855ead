"""Turning OpenAI requests into prompt token ids: completion prompts and chat templates.

Why: a fine-tuned chat model only behaves if it sees conversations in the format it was trained on, so
chat requests go through the tokenizer's own chat template (the trainer saves the tokenizer, template
included, beside the model). A tokenizer without one gets the trainer's own default template
(`finetune_trainer.data.chat_template`), the one a model trained without a template learned, which ends every
turn with the end-of-sequence token, so replies end where the assistant's turn ends.

A request's messages are read by the trainer's own `chat` reader and rendered by the trainer's own rendering
function, so `name`, tool calls, tool results and the tool list reach the model exactly as in training (the
same token ids: tests/serve/test_train_serve_rendering.py); what the template would drop is a 400 naming it.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.chat_template import lost_fields, render_messages, template_of
from finetune_trainer.data.formats.base import Fields
from finetune_trainer.data.formats.chat import turns_and_tools
from finetune_trainer.serving.server.protocol import APIError, bad_request


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template, or the default."""
    return template_of(tokenizer)


def template_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """A request's OpenAI messages and tools in the shape the chat template gets, made by the very code that
    reads the trainer's `chat` data (`formats.chat.turns_and_tools`): tool-call arguments decoded from their
    JSON string, text parts joined, a missing content as "". Its refusals become 400s naming `messages`."""
    data: dict[str, Any] = {"messages": messages}
    if tools:
        data["tools"] = tools
    try:
        turns, checked = turns_and_tools(Fields(data, "request", {}))
    except DatasetInvalid as error:
        raise bad_request(str(error).removeprefix("request: "), "messages") from None
    return [turn.template_message() for turn in turns], checked


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The prompt text for a conversation (template messages), ending with the start of the assistant's turn;
    a 400 naming the field where the template would drop `name`, tool calls or the tool list."""
    try:
        text = render_messages(tokenizer, messages, generation_prompt=True, tools=tools)
        lost = lost_fields(tokenizer, messages, tools) if tools or _has_extras(messages) else []
    except APIError:
        raise
    except Exception as error:  # jinja raises its own errors, templates raise on unsupported roles
        raise bad_request(f"the chat template cannot render these messages: {error}", "messages") from error
    if lost:
        key, index = lost[0]
        param = "tools" if index is None else f"messages[{index}].{key}"
        what = {"name": "a message's 'name'", "tool_calls": "assistant tool_calls", "tools": "the tool list"}[key]
        raise bad_request(
            f"this model's chat template does not render {what}, so the model would never see it: "
            "leave it out of the request (a model trained with the trainer's default template renders it)",
            param,
            "unsupported_parameter",
        )
    return text


def _has_extras(messages: list[dict[str, Any]]) -> bool:
    return any("name" in m or "tool_calls" in m for m in messages)


def with_fallback_start(tokenizer: Any, ids: list[int]) -> list[int]:
    """A prompt must have at least one token: an empty one becomes the beginning-of-sequence token."""
    if ids:
        return ids
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise bad_request("the prompt is empty", "prompt")
    return [int(start)]


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of a rendered conversation (template messages; the template already carries any special
    tokens, so none are added: as the trainer tokenizes)."""
    ids = tokenizer.encode(render_chat(tokenizer, messages, tools), add_special_tokens=False)
    return with_fallback_start(tokenizer, [int(i) for i in ids])


def encode_completion(tokenizer: Any, prompt: str | list[str] | list[int]) -> list[int]:
    """Token ids of a completion prompt: text (with the tokenizer's usual special tokens) or token ids."""
    if isinstance(prompt, list) and prompt and all(isinstance(item, int) for item in prompt):
        vocab = len(tokenizer)
        if any(not 0 <= int(item) < vocab for item in prompt):
            raise bad_request(f"prompt token ids must be in [0, {vocab})", "prompt")
        return [int(item) for item in prompt]
    text = prompt if isinstance(prompt, str) else "".join(str(item) for item in prompt)
    return with_fallback_start(tokenizer, [int(i) for i in tokenizer.encode(text)])


_LONGEST: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def longest_token(tokenizer: Any) -> int:
    """The most characters one token of the vocabulary spells (computed once per tokenizer).

    Why: a text of `n` characters has at least `n / longest_token` tokens, so a prompt far over the token limit
    is refused from its length alone, before the tokenizer spends seconds on a million characters.
    """
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    longest = max((len(piece) for piece in tokenizer.get_vocab()), default=1) or 1
    with contextlib.suppress(TypeError):  # a tokenizer that takes no weak reference: recomputed next time
        _LONGEST[tokenizer] = longest
    return longest


def refuse_long_text(tokenizer: Any, characters: int, limit: int, param: str) -> None:
    """400 when `characters` cannot fit in `limit` tokens whatever the tokenizer does with them."""
    if characters > limit * longest_token(tokenizer):
        raise bad_request(
            f"the prompt has {characters} characters, more than {limit} tokens (this server's prompt limit) can hold",
            param,
            "context_length_exceeded",
        )


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (each byte drawn as a printable character), reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTES = _byte_decoder()


def token_bytes(tokenizer: Any, token: int) -> list[int]:
    """The UTF-8 bytes a token stands for (OpenAI's logprobs `bytes`), also for a token that is only part of a
    character: byte-level BPE pieces through GPT-2's alphabet, SentencePiece's `<0xNN>` byte tokens as that byte."""
    text = str(tokenizer.decode([token], skip_special_tokens=False))
    if "\ufffd" not in text:
        return list(text.encode("utf-8"))
    piece = tokenizer.convert_ids_to_tokens(token)
    if isinstance(piece, str):
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return [int(piece[3:5], 16)]
        if all(char in _BYTES for char in piece):
            return [_BYTES[char] for char in piece]
    return list(text.encode("utf-8"))
