"""Loss masks: only completion and assistant tokens are targets; the default chat template is consistent."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_trainer.tokenization import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    causal_lm_batch,
    ensure_chat_template,
    render_chat,
)

from tests.trainer.builders import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = build_tokenizer()
    assert ensure_chat_template(tok) and tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert not ensure_chat_template(tok)
    return tok


def targets(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return str(tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]))


def test_prompt_completion_masks_prompt_and_appends_eos(tokenizer: Any) -> None:
    fn = causal_lm_batch(tokenizer, "prompt-completion", 64)
    out = fn({"prompt": ["what is two and three ?"], "completion": [" five"]})
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert labels[0] == IGNORE_INDEX
    assert targets(tokenizer, ids, labels).replace("</s>", "").strip() == "five"
    assert labels[-1] == tokenizer.eos_token_id


def test_text_schema_trains_on_everything_but_bos(tokenizer: Any) -> None:
    out = causal_lm_batch(tokenizer, "text", 64)({"text": ["the red apple"]})
    labels = out["labels"][0]
    assert labels[0] == IGNORE_INDEX and all(label != IGNORE_INDEX for label in labels[1:])


def test_truncation_respects_max_length_and_skips_eos(tokenizer: Any) -> None:
    long_text = " ".join(["apple banana cherry"] * 40)
    out = causal_lm_batch(tokenizer, "text", 16)({"text": [long_text]})
    assert len(out["input_ids"][0]) == 15 and out["input_ids"][0][-1] != tokenizer.eos_token_id


def test_chat_masks_everything_but_assistant_turns(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "thanks one"},
        {"role": "user", "content": "what"},
        {"role": "assistant", "content": "two three"},
    ]
    text, spans = render_chat(tokenizer, messages)
    assert [text[a:b] for a, b in spans] == ["thanks one</s>\n", "two three</s>\n"]
    out = causal_lm_batch(tokenizer, "chat", 256)({"messages": [messages]})
    learned = targets(tokenizer, out["input_ids"][0], out["labels"][0])
    assert "thanks one" in learned and "two three" in learned
    assert "hello" not in learned and "be brief" not in learned and "<|user|>" not in learned
