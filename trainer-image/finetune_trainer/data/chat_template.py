"""The chat template: rendering a conversation with the base model's template (and the spans of its learned
turns), the trainer's default template, and the check that a template renders every field of the data.

Why apart from tokenization: the model server renders chat requests with the template the model was trained
with (`serving.server.prompts` falls back to `DEFAULT_CHAT_TEMPLATE`), and it must not import the tokenization
of datasets. A tokenizer without a chat template gets a small ChatML-like default, saved with the model so the server
renders prompts exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.formats.base import Conversation

DEFAULT_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|tools|>\n' + (tools | tojson) + (eos_token or '') + '\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['name'] is defined and message['name'] %}{{ ' ' + message['name'] }}{% endif %}"
    "{{ '\n' + (message['content'] or '') }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>' + (call['function'] | tojson) + '</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ (eos_token or '') + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""ChatML-like; renders `name` after the role, tool calls as `<tool_call>{json}</tool_call>` and the tool
list first, so no field of the `chat` format is lost with it. Without names and tools it renders exactly
as the template models were trained with before names and tools existed."""


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give the tokenizer the default chat template when it has none; True when one was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def template_of(tokenizer: Any) -> str:
    """The chat template a tokenizer renders with: its own, else the trainer's default (what the trainer saved
    beside a model it trained without one, `ensure_chat_template`)."""
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE


def render_messages(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """THE rendering of a conversation, used by the trainer (training text and its learned spans) and by the
    model server (the prompt of a chat request), so both see the same text and so the same token ids.

    `messages` are `Turn.template_message()` dicts (`formats.chat.turns_and_tools` makes them from OpenAI's
    message shape, at training and at serving time); `tools` is OpenAI's tool list, passed to the template
    only when non-empty (as transformers does)."""
    extra = {"tools": tools} if tools else {}
    if not messages:
        if not generation_prompt:
            return ""
        try:
            return str(
                tokenizer.apply_chat_template(
                    [], chat_template=template_of(tokenizer), tokenize=False, add_generation_prompt=True, **extra
                )
            )
        except Exception:  # some templates refuse an empty conversation
            return ""
    return str(
        tokenizer.apply_chat_template(
            list(messages),
            chat_template=template_of(tokenizer),
            tokenize=False,
            add_generation_prompt=generation_prompt,
            **extra,
        )
    )


def _render(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    return render_messages(tokenizer, messages, generation_prompt=generation_prompt, tools=tools)


def lost_fields(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[tuple[str, int | None]]:
    """What of `name`, `tool_calls` and `tools` the template would drop: each as (field, index of the first
    message carrying it, None for `tools`). A field is lost when rendering without it gives the same text.

    Why: a template that ignores a field drops it without a word, and the trainer (refusing such a record) and
    the server (refusing such a request with a 400) must agree on what a template renders."""
    full = _render(tokenizer, messages, False, tools)
    lost: list[tuple[str, int | None]] = []
    for key in ("name", "tool_calls"):
        carriers = [index for index, message in enumerate(messages) if key in message]
        if carriers:
            plain = [{k: v for k, v in m.items() if k != key} for m in messages]
            if _render(tokenizer, plain, False, tools) == full:
                lost.append((key, carriers[0]))
    if tools and _render(tokenizer, messages, False, None) == full:
        lost.append(("tools", None))
    return lost


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    learn: Sequence[bool] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its learned turns.

    `learn[i]` says whether message i is learned (default: every assistant message). A turn's span is the
    text the template adds between "conversation so far + generation prompt" and "conversation including
    this turn". Templates that are not prefix-consistent fall back to the span of the turn's content
    found in the full text.
    """
    flags = list(learn) if learn is not None else [m["role"] == "assistant" for m in messages]
    full = _render(tokenizer, messages, False, tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if not flags[i]:
            continue
        before = _render(tokenizer, messages[:i], True, tools)
        upto = _render(tokenizer, messages[: i + 1], False, tools)
        if full.startswith(upto) and upto.startswith(before) and len(upto) > len(before):
            spans.append((len(before), len(upto)))
            cursor = len(upto)
        elif message["content"]:
            start = full.find(message["content"], cursor)
            if start >= 0:
                spans.append((start, start + len(message["content"])))
                cursor = start + len(message["content"])
    return full, spans


def check_template(tokenizer: Any, examples: Sequence[dict[str, Any]], origins: Sequence[str]) -> None:
    """Refuse conversations the base model's chat template cannot render in full.

    A template that ignores `name`, tool calls or the tool list would drop them without a word, so each
    conversation that has them is rendered with and without them: no difference means they would be lost.
    A template that raises (unsupported role, alternation rules) is reported with the record's line.
    """
    for example, origin in zip(examples, origins, strict=True):
        conversation = Conversation.from_example(example)
        messages = [t.template_message() for t in conversation.turns]
        try:
            wording = {"name": "'name'", "tool_calls": "tool calls", "tools": "the tool list ('tools')"}
            lost = [wording[key] for key, _ in lost_fields(tokenizer, messages, conversation.tools)]
        except DatasetInvalid:
            raise
        except Exception as error:  # jinja errors, raise_exception() in templates
            raise DatasetInvalid(
                f"{origin}: the base model's chat template cannot render this conversation: {error}"
            ) from None
        if lost:
            raise DatasetInvalid(
                f"{origin}: the base model's chat template does not render {' or '.join(lost)}, so it would not "
                "reach the model; remove it from the data, or use a base model whose chat template renders it "
                "(the trainer's default template, used when a tokenizer has none, renders names and tools)"
            )
