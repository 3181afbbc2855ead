"""The server speaks the OpenAI API: exercised with the official `openai` client over real HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.serve.conftest import MODEL_NAME

PROMPTS = [
    "the quick brown",
    "hello world",
    "a fine tuned model",
    "café déjà",
    "serving models over",
    "kubernetes operators",
    "the lazy dog",
    "emoji 🙂",
]


def greedy(client: Any, prompt: str, max_tokens: int = 24, **extra: Any) -> Any:
    return client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0, **extra)


def test_models_lists_the_served_model_and_run(client: Any) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [MODEL_NAME]
    assert models.data[0].model_extra["run"] == 2


def test_completion_counts_usage_and_honours_max_tokens(client: Any) -> None:
    result = greedy(client, "the quick brown", max_tokens=12)
    choice = result.choices[0]
    assert result.object == "text_completion" and result.model == MODEL_NAME
    assert choice.finish_reason in ("length", "stop")
    assert choice.text
    if choice.finish_reason == "length":
        assert result.usage.completion_tokens == 12
    assert 1 <= result.usage.completion_tokens <= 12
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_greedy_is_deterministic_and_sampling_with_a_seed_reproduces(client: Any) -> None:
    assert greedy(client, "hello world").choices[0].text == greedy(client, "hello world").choices[0].text
    sampled = [
        client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=16, temperature=1.5, top_p=0.9, seed=7)
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_streaming_gives_the_same_text_as_one_response(client: Any) -> None:
    whole = greedy(client, "serving models over", max_tokens=20)
    chunks = list(
        greedy(client, "serving models over", max_tokens=20, stream=True, stream_options={"include_usage": True})
    )
    text_chunks = [chunk for chunk in chunks if chunk.choices]
    assert "".join(chunk.choices[0].text for chunk in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len(text_chunks) > 2  # streamed piece by piece, not in one block
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_ends_with_done(lm_server: Any) -> None:
    body = {"model": MODEL_NAME, "prompt": "hello", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", lm_server.url + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_stop_string_cuts_the_text_before_it(client: Any) -> None:
    full = greedy(client, "the lazy dog", max_tokens=40).choices[0].text
    assert len(full) >= 8, full
    stop = full[4:7]
    expected = full[: full.index(stop)]
    result = greedy(client, "the lazy dog", max_tokens=40, stop=[stop, "never-appears"])
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in greedy(client, "the lazy dog", max_tokens=40, stop=stop, stream=True))
    assert streamed == expected


def test_chat_uses_a_template_and_streams(client: Any) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=16, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens > len("be brief hello world") // 4  # the template's markers count too
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=16, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_concurrent_requests_match_sequential_ones(client: Any) -> None:
    def run(item: tuple[int, str]) -> str:  # different lengths: sequences leave the batch at different steps
        text: str = greedy(client, item[1], max_tokens=20 + item[0]).choices[0].text
        return text

    sequential = [run(item) for item in enumerate(PROMPTS)]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(run, enumerate(PROMPTS)))
    assert concurrent == sequential


def test_n_above_the_limit_is_refused_naming_n(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt=["hi", "there"], n=9)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "n"
    assert caught.value.body["type"] == "invalid_request_error"


def test_bad_parameters_are_400_in_openai_shape(lm_server: Any) -> None:
    response = httpx.post(
        lm_server.url + "/v1/completions", timeout=30, json={"model": MODEL_NAME, "prompt": "hi", "temperature": 5}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "temperature"
    too_long = httpx.post(
        lm_server.url + "/v1/completions", timeout=30, json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 100_000}
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    not_json = httpx.post(
        lm_server.url + "/v1/chat/completions",
        content=b"{oops",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 400 and "error" in not_json.json()


def test_unknown_model_is_404(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"


def test_metrics_count_requests_and_tokens(client: Any, lm_server: Any) -> None:
    greedy(client, "hello", max_tokens=3)
    text = httpx.get(lm_server.url + "/metrics", timeout=30).text
    assert 'fto_serve_requests_total{method="POST",route="/v1/completions",status="200"}' in text
    assert "fto_serve_request_duration_seconds_bucket" in text
    generated = [line for line in text.splitlines() if line.startswith("fto_serve_generated_tokens_total")]
    assert generated and float(generated[0].split()[-1]) >= 3
    assert "fto_serve_model_ready 1.0" in text


def test_a_full_queue_answers_429(client: Any, lm_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm_engine, "waiting", lambda: 16 * lm_engine.max_batch_size)
    with pytest.raises(openai.RateLimitError) as caught:
        greedy(client, "hello")
    assert caught.value.body["code"] == "server_overloaded"
