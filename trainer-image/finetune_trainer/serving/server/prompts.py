"""Turning OpenAI requests into prompt token ids: completion prompts and chat templates.

Why: a fine-tuned chat model only behaves if it sees conversations in the format it was trained on, so
chat requests go through the tokenizer's own chat template (the trainer saves the tokenizer, template
included, beside the model). A tokenizer without one gets the trainer's own default template
(`finetune_trainer.data.chat_template`), the one a model trained without a template learned, which ends every
turn with the end-of-sequence token, so replies end where the assistant's turn ends.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.chat_template import DEFAULT_CHAT_TEMPLATE
from finetune_trainer.serving.server.protocol import APIError, bad_request


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template, or the default."""
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text for a conversation, ending with the start of the assistant's turn."""
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template(tokenizer), tokenize=False, add_generation_prompt=True
        )
    except APIError:
        raise
    except Exception as error:  # jinja raises its own errors, templates raise on unsupported roles
        raise bad_request(f"the chat template cannot render these messages: {error}", "messages") from error
    return str(text)


def with_fallback_start(tokenizer: Any, ids: list[int]) -> list[int]:
    """A prompt must have at least one token: an empty one becomes the beginning-of-sequence token."""
    if ids:
        return ids
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise bad_request("the prompt is empty", "prompt")
    return [int(start)]


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a rendered conversation (the template already carries any special tokens)."""
    ids = tokenizer.encode(render_chat(tokenizer, messages), add_special_tokens=False)
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
