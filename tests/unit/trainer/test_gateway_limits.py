"""The gateway's pure request rules (finetune_trainer.serving.gateway.limits) and its flags, from tables."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_trainer.serving.gateway.cli import parse_args
from finetune_trainer.serving.gateway.limits import CHAT, COMPLETIONS, TokenLimits, bounded, model_of
from finetune_trainer.serving.server.protocol import APIError

LIMITS = TokenLimits(default_max_tokens=100, max_tokens_limit=1000)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (CHAT, {}, {"max_tokens": 100}),
        (CHAT, {"max_tokens": None}, {"max_tokens": 100}),
        (CHAT, {"max_tokens": 7}, {"max_tokens": 7}),
        (CHAT, {"max_completion_tokens": 9}, {"max_completion_tokens": 9}),
        (CHAT, {"max_tokens": 1000}, {"max_tokens": 1000}),
        (COMPLETIONS, {}, {"max_tokens": 16}),  # OpenAI's default for a completion
        (COMPLETIONS, {"max_tokens": None}, {"max_tokens": 16}),  # null would be the whole context for vLLM
        (COMPLETIONS, {"max_completion_tokens": 5000}, {"max_completion_tokens": 5000, "max_tokens": 16}),
        (CHAT, {"n": 16}, {"n": 16, "max_tokens": 100}),  # our engine's ceiling, passed on as asked
        (COMPLETIONS, {"n": 4, "best_of": 4}, {"n": 4, "best_of": 4, "max_tokens": 16}),
        (CHAT, {"n": None}, {"n": None, "max_tokens": 100}),
    ],
)
def test_bounded(path: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    request = {"model": "m", **body}
    assert bounded(path, request, LIMITS) == {"model": "m", **expected}
    assert request == {"model": "m", **body}  # the input is left alone


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"max_tokens": 1001}, "max_tokens"),
        (CHAT, {"max_completion_tokens": 10**9}, "max_completion_tokens"),
        (COMPLETIONS, {"max_tokens": 1001}, "max_tokens"),
        (CHAT, {"max_tokens": 0}, "max_tokens"),
        (CHAT, {"max_tokens": "10"}, "max_tokens"),
        (CHAT, {"max_tokens": True}, "max_tokens"),
        # each choice is a whole generation: n and best_of over our engine's ceiling would multiply one request
        (CHAT, {"n": 17}, "n"),
        (COMPLETIONS, {"best_of": 10**6}, "best_of"),
        (CHAT, {"n": 0}, "n"),
        (COMPLETIONS, {"n": "2"}, "n"),
    ],
)
def test_refused_token_budgets_name_the_field(path: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as caught:
        bounded(path, {"model": "m", **body}, LIMITS)
    assert caught.value.status == 400 and caught.value.param == param


@pytest.mark.parametrize("body", [[], "x", {}, {"model": ""}, {"model": 3}])
def test_a_request_must_name_its_model(body: Any) -> None:
    with pytest.raises(APIError) as caught:
        model_of(body)
    assert caught.value.status == 400


def test_flags() -> None:
    args = parse_args(["--upstream", "http://127.0.0.1:8080", "--base-model", "a", "--base-model", "b"])
    assert (args.max_body_bytes, args.max_requests, args.default_max_tokens, args.max_tokens_limit) == (
        1 << 20,
        64,
        256,
        4096,
    )
    assert args.base_model == ["a", "b"] and args.adapters_file is None
    for bad in (
        ["--upstream", "http://10.1.2.3:8080"],  # vLLM is on loopback only
        ["--upstream", "http://127.0.0.1:8080", "--max-requests", "0"],
        ["--upstream", "http://127.0.0.1:8080", "--default-max-tokens", "10", "--max-tokens-limit", "5"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)
