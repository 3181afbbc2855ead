"""`preference`: a prompt with a chosen and a rejected answer, for `method.objective: dpo` or `simpo`.

`prompt`, `chosen` and `rejected` are strings, or lists of {role, content} messages (TRL's conversational
preference format: the prompt's messages end with the user's turn, chosen and rejected are the assistant's
replies). A string prompt is one user message and a string answer one assistant message, so every pair is
rendered with the base model's chat template, as the tuned model will be prompted when served. A pair whose
chosen equals its rejected answer teaches nothing and is refused, naming its line.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.formats.base import Fields, Format, PreferencePair
from finetune_trainer.data.formats.chat import content_text

PROMPT_ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset({"role", "content"})


def messages(fields: Fields, value: Any, where: str, *, answer: bool) -> list[dict[str, str]]:
    """A string or a list of {role, content} messages as plain messages; `answer`: assistant messages only."""
    if isinstance(value, str):
        if not value.strip():
            raise fields.fail(f"{where} is empty")
        return [{"role": "assistant" if answer else "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise fields.fail(f"{where} must be a string or a non-empty list of {{role, content}} messages")
    out = []
    for index, message in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise fields.fail(f"{at} must be an object with 'role' and 'content'")
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            raise fields.fail(
                f"{at}: unknown key(s) {', '.join(map(repr, unknown))} (a preference message has role, content)"
            )
        role = message["role"]
        allowed = ("assistant",) if answer else PROMPT_ROLES
        if role not in allowed:
            raise fields.fail(f"{at}: role must be {' or '.join(allowed)}, got {role!r}")
        content = content_text(message["content"], at, fields)
        if answer and not content.strip():
            raise fields.fail(f"{at}: the answer's content is empty")
        out.append({"role": role, "content": content})
    if not answer and out[-1]["role"] == "assistant":
        raise fields.fail(f"{where}: the prompt ends with an assistant message; the answers go in the two replies")
    return out


def pair(
    fields: Fields,
    prompt: list[dict[str, str]],
    chosen: list[dict[str, str]],
    rejected: list[dict[str, str]],
    names: tuple[str, str],
) -> dict[str, Any]:
    """The normalised example of a pair; refuses one whose two answers are the same."""
    if chosen == rejected:
        raise fields.fail(
            f"{names[0]!r} and {names[1]!r} are the same answer, so the pair prefers nothing (fix it or drop the "
            "record)"
        )
    return PreferencePair(prompt, chosen, rejected).to_example()


def normalize(fields: Fields) -> dict[str, Any]:
    names = {name: fields.column(name) for name in ("prompt", "chosen", "rejected")}
    prompt = messages(fields, fields.raw("prompt"), f"field {names['prompt']!r}", answer=False)
    chosen = messages(fields, fields.raw("chosen"), f"field {names['chosen']!r}", answer=True)
    rejected = messages(fields, fields.raw("rejected"), f"field {names['rejected']!r}", answer=True)
    return pair(fields, prompt, chosen, rejected, (names["chosen"], names["rejected"]))


FORMAT = Format(
    name="preference",
    summary=(
        "preference: prompt, chosen, rejected (strings, or TRL's conversational lists of messages); "
        "for method.objective dpo or simpo"
    ),
    kind="preference",
    task="causal-lm",
    fields=("prompt", "chosen", "rejected"),
    required=("prompt", "chosen", "rejected"),
    example={
        "prompt": "How do I reset my password?",
        "chosen": "Open Settings, choose Security, then Reset password.",
        "rejected": "Contact support.",
    },
    normalize=normalize,
    notes=(
        "A string prompt is one user message and a string answer one assistant message; both are rendered with "
        "the base model's chat template.",
        'TRL\'s conversational variant: `{"prompt": [{"role": "user", "content": ...}], "chosen": '
        '[{"role": "assistant", "content": ...}], "rejected": [...]}`.',
    ),
)
