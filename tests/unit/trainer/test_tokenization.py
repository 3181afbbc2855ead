"""Loss masks: only completion and learned assistant tokens are targets; every field reaches the model.

Each format's fields are checked in the decoded token ids of a tokenized batch, as the model sees them:
alpaca's `input`, the chat format's `name`, tool calls and tool list, and OpenAI's `weight: 0` (its turn
is in the input but all its labels are -100). A chat template that would drop a field is refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.chat_template import DEFAULT_CHAT_TEMPLATE, ensure_chat_template, render_chat
from finetune_trainer.data.formats import FORMATS, normalize
from finetune_trainer.data.readers import Record
from finetune_trainer.data.tokenization import IGNORE_INDEX, causal_lm_batch, tokenize_with_stats

from tests.trainer.builders import build_tokenizer

NAME_BLIND_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + (message['content'] or '') + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""A template like many real ones: role and content only (no names, no tool calls)."""


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = build_tokenizer()
    assert ensure_chat_template(tok) and tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert not ensure_chat_template(tok)
    return tok


def examples(schema: str, *records: dict[str, Any]) -> list[dict[str, Any]]:
    return normalize([Record(r, f"s3://b/d.jsonl line {i + 1}") for i, r in enumerate(records)], FORMATS[schema], {})


def batch(schema: str, *records: dict[str, Any]) -> dict[str, list[Any]]:
    rows = examples(schema, *records)
    return {key: [row[key] for row in rows] for key in rows[0]}


def decoded(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids))


def targets(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return str(tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]))


def test_prompt_completion_masks_prompt_and_appends_eos(tokenizer: Any) -> None:
    fn = causal_lm_batch(tokenizer, "prompt-completion", 64)
    out = fn(batch("prompt-completion", {"prompt": "what is two and three ?", "completion": " five"}))
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert labels[0] == IGNORE_INDEX
    assert targets(tokenizer, ids, labels).replace("</s>", "").strip() == "five"
    assert labels[-1] == tokenizer.eos_token_id


def test_text_schema_trains_on_everything_but_bos(tokenizer: Any) -> None:
    out = causal_lm_batch(tokenizer, "text", 64)(batch("text", {"text": "the red apple"}))
    labels = out["labels"][0]
    assert labels[0] == IGNORE_INDEX and all(label != IGNORE_INDEX for label in labels[1:])


def test_truncation_respects_max_length_skips_eos_and_is_counted(tokenizer: Any) -> None:
    long_text = " ".join(["apple banana cherry"] * 40)
    out = causal_lm_batch(tokenizer, "text", 16)(batch("text", {"text": long_text}, {"text": "one"}))
    assert len(out["input_ids"][0]) == 15 and out["input_ids"][0][-1] != tokenizer.eos_token_id
    assert out["truncated"] == [True, False]
    _, stats = tokenize_with_stats(
        examples("text", {"text": long_text}, {"text": "one two"}), tokenizer, "text", 16, None, "t"
    )
    assert (stats.records, stats.truncated, stats.dropped) == (2, 1, 0)


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
    out = causal_lm_batch(tokenizer, "chat", 256)(batch("chat", {"messages": messages}))
    learned = targets(tokenizer, out["input_ids"][0], out["labels"][0])
    assert "thanks one" in learned and "two three" in learned
    assert "hello" not in learned and "be brief" not in learned and "<|user|>" not in learned


def test_openai_weight_zero_turn_is_input_but_never_a_target(tokenizer: Any) -> None:
    """OpenAI: `weight: 0` on an assistant message means "do not learn from this turn"."""
    messages = [
        {"role": "user", "content": "what is two and three ?"},
        {"role": "assistant", "content": "six", "weight": 0},
        {"role": "user", "content": "no"},
        {"role": "assistant", "content": "five", "weight": 1},
    ]
    out = causal_lm_batch(tokenizer, "chat", 256)(batch("chat", {"messages": messages}))
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert "six" in decoded(tokenizer, ids)
    learned = targets(tokenizer, ids, labels)
    assert "five" in learned and "six" not in learned
    text, spans = render_chat(
        tokenizer, [{k: v for k, v in m.items() if k != "weight"} for m in messages], [False, False, False, True]
    )
    six = text.index("six")
    assert not any(a <= six < b for a, b in spans)  # the whole weight-0 turn (not just its word) is masked


def test_openai_name_and_content_parts_reach_the_model(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
        {"role": "user", "name": "alice", "content": "hello"},
        {"role": "assistant", "name": "helper", "content": "thanks"},
    ]
    out = causal_lm_batch(tokenizer, "chat", 256)(batch("chat", {"messages": messages}))
    text = decoded(tokenizer, out["input_ids"][0])
    assert "<|user|> alice\nhello" in text and "<|assistant|> helper\nthanks" in text and "be brief" in text


def test_openai_tool_calls_and_tools_reach_the_model(tokenizer: Any) -> None:
    record = {
        "messages": [
            {"role": "user", "content": "weather in paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "it is sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    }
    out = causal_lm_batch(tokenizer, "chat", 512)(batch("chat", record))
    ids, labels = out["input_ids"][0], out["labels"][0]
    text = decoded(tokenizer, ids)
    assert text.startswith("<|tools|>") and '"parameters"' in text
    learned = targets(tokenizer, ids, labels)
    # the call as the data writes it (name, then arguments): the order a chat request to the server renders
    assert '<tool_call>{"name": "weather", "arguments": {"city": "paris"}}</tool_call>' in learned
    assert "it is sunny" in learned and "sunny</s>\n<|assistant|>" not in learned  # the tool's answer is input


def test_template_that_drops_names_or_tools_is_refused(tokenizer: Any) -> None:
    blind = build_tokenizer()
    blind.chat_template = NAME_BLIND_TEMPLATE
    named = examples(
        "chat", {"messages": [{"role": "user", "content": "hi", "name": "bob"}, {"role": "assistant", "content": "yo"}]}
    )
    with pytest.raises(
        DatasetInvalid, match=r"s3://b/d.jsonl line 1: the base model's chat template does not render 'name'"
    ):
        tokenize_with_stats(named, blind, "chat", 64, None, "train", ["s3://b/d.jsonl line 1"])
    call = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    tooled = examples(
        "chat", {"messages": [{"role": "user", "content": "hi"}, call, {"role": "assistant", "content": "ok"}]}
    )
    with pytest.raises(DatasetInvalid, match="does not render tool calls"):
        tokenize_with_stats(tooled, blind, "chat", 64, None, "train", ["s3://b/d.jsonl line 1"])
    plain = examples("chat", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    dataset, _ = tokenize_with_stats(plain, blind, "chat", 64, None, "train", ["s3://b/d.jsonl line 1"])
    assert len(dataset) == 1


def test_alpaca_input_and_system_reach_the_model_output_is_the_target(tokenizer: Any) -> None:
    record = {"instruction": "add the numbers", "input": "two and three", "output": "five", "system": "be brief"}
    out = causal_lm_batch(tokenizer, "alpaca", 256)(batch("alpaca", record))
    ids, labels = out["input_ids"][0], out["labels"][0]
    text = decoded(tokenizer, ids)
    assert "<|system|>\nbe brief" in text and "add the numbers\n\ntwo and three" in text
    assert targets(tokenizer, ids, labels) == "five</s>\n"


def test_sharegpt_roles_and_system_field(tokenizer: Any) -> None:
    record = {
        "system": "be brief",
        "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "thanks"}],
    }
    out = causal_lm_batch(tokenizer, "sharegpt", 256)(batch("sharegpt", record))
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert decoded(tokenizer, ids) == "<|system|>\nbe brief</s>\n<|user|>\nhello</s>\n<|assistant|>\nthanks</s>\n"
    assert targets(tokenizer, ids, labels) == "thanks</s>\n"


def test_preference_pair_is_one_row_chosen_then_rejected_with_only_the_replies_learned(tokenizer: Any) -> None:
    rows = examples("preference", {"prompt": "hi", "chosen": "hello", "rejected": "go"})
    dataset, stats = tokenize_with_stats(rows, tokenizer, "preference", 64, None, "train")
    row = dataset[0]
    split = row["chosen_length"]
    chosen, rejected = row["input_ids"][:split], row["input_ids"][split:]
    assert decoded(tokenizer, chosen) == "<|user|>\nhi</s>\n<|assistant|>\nhello</s>\n"
    assert decoded(tokenizer, rejected) == "<|user|>\nhi</s>\n<|assistant|>\ngo</s>\n"
    assert targets(tokenizer, chosen, row["labels"][:split]) == "hello</s>\n"
    assert targets(tokenizer, rejected, row["labels"][split:]) == "go</s>\n"
    assert (stats.records, stats.truncated, stats.dropped) == (1, 0, 0)
    assert stats.tokens == len(row["input_ids"])


def test_preference_pairs_past_max_seq_length_are_counted_not_lost(tokenizer: Any) -> None:
    long_prompt = " ".join(["apple"] * 80)
    rows = examples(
        "preference",
        {"prompt": "hi", "chosen": "hello " * 40, "rejected": "go"},  # the chosen reply is cut: counted, kept
        {"prompt": long_prompt, "chosen": "hello", "rejected": "go"},  # no reply token fits: dropped, counted
        {"prompt": "hi", "chosen": "go", "rejected": "went"},
    )
    dataset, stats = tokenize_with_stats(rows, tokenizer, "preference", 40, None, "train")
    assert (stats.records, stats.truncated, stats.dropped) == (2, 2, 1)
    assert len(dataset) == 2 and all(len(r["input_ids"]) <= 80 for r in dataset)
    with pytest.raises(DatasetInvalid, match="empty split"):
        tokenize_with_stats(rows[1:2], tokenizer, "preference", 40, None, "train")
