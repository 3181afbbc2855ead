"""Tool calls in model output (`<tool_call>{json}</tool_call>`) to OpenAI's shape, and logit adjustments, without
a model or HTTP: the splitting of streamed text into content and calls is where partial tags hide."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_trainer.serving.server.decoding import adjust_logits, token_logprobs
from finetune_trainer.serving.server.tools import ToolCallSplitter, parse_tool_calls, template_calls_tools

NAMES = {"track", "ring"}
CALL = '<tool_call>{"name": "track", "arguments": {"id": "7"}}</tool_call>'


def split(text: str, step: int, forced: bool = False) -> tuple[str, str, list[dict[str, object]] | None]:
    """Feed `text` in pieces of `step` characters; (content streamed, content at the end, calls)."""
    splitter = ToolCallSplitter(NAMES, forced)
    streamed = "".join(splitter.push(text[i : i + step]) for i in range(0, len(text), step))
    rest, calls = splitter.finish()
    return streamed, rest, None if calls is None else [call.openai() for call in calls]


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_content_before_a_call_streams_and_the_call_is_parsed(step: int) -> None:
    streamed, rest, calls = split("Let me look. " + CALL, step)
    assert streamed + rest == "Let me look. "
    assert "<" not in streamed  # the tag's start is held back, never sent as content
    assert calls is not None and len(calls) == 1
    function = calls[0]["function"]
    assert (
        isinstance(function, dict) and function["name"] == "track" and json.loads(function["arguments"]) == {"id": "7"}
    )
    assert str(calls[0]["id"]).startswith("call_")


@pytest.mark.parametrize("step", [1, 5])
def test_text_that_only_looks_like_a_tag_is_content(step: int) -> None:
    streamed, rest, calls = split("a < b and <tool is fine", step)
    assert streamed + rest == "a < b and <tool is fine" and calls is None


def test_unparsable_or_unknown_calls_are_given_back_as_content() -> None:
    for text in ("<tool_call>{not json}</tool_call>", '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'):
        streamed, rest, calls = split("x " + text, 4)
        assert calls is None and streamed + rest == "x " + text


def test_several_calls_an_unterminated_last_one_and_string_arguments() -> None:
    text = CALL + '\n<tool_call>{"name": "ring", "arguments": "{}"}'
    calls = parse_tool_calls(text, NAMES)
    assert calls is not None and [c.name for c in calls] == ["track", "ring"] and calls[1].arguments == "{}"
    assert len({c.id for c in calls}) == 2


def test_a_forced_call_has_no_content() -> None:
    streamed, rest, calls = split(CALL, 2, forced=True)
    assert streamed == rest == "" and calls is not None


def test_the_convention_is_read_from_the_template() -> None:
    from finetune_trainer.data.chat_template import DEFAULT_CHAT_TEMPLATE

    assert template_calls_tools(DEFAULT_CHAT_TEMPLATE)
    assert not template_calls_tools("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_penalties_bias_and_a_mask_adjust_a_copy_of_the_logits() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = adjust_logits(logits, [3, 3, 1], presence_penalty=0.5, frequency_penalty=1.0, logit_bias=[(0, 10.0)])
    assert out.tolist() == [11.0, 2.0 - 1.0 - 0.5, 3.0, 4.0 - 2.0 - 0.5]
    assert logits.tolist() == [1.0, 2.0, 3.0, 4.0]
    masked = adjust_logits(logits, [], allowed=torch.tensor([True, False, True, False]))
    assert masked[1] == float("-inf") and masked[3] == float("-inf") and masked[2] == 3.0


def test_token_logprobs_are_the_raw_distribution() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0])
    chosen, top = token_logprobs(logits, 0, 2)
    expected = torch.log_softmax(logits, -1)
    assert chosen == pytest.approx(float(expected[0]))
    assert [t for t, _ in top] == [2, 1] and top[0][1] == pytest.approx(float(expected[2]))
    assert token_logprobs(logits, 1, 0)[1] == []
