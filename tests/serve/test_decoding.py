"""Incremental detokenisation, stop strings and sampling, without a model."""

from __future__ import annotations

import torch
from finetune_trainer.serving.server.decoding import TextStream, choose_next_tokens, filter_top_p

# A toy byte-level vocabulary: token i is byte i (as in byte-level BPE, a character may span tokens).


def decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def ids_of(text: str) -> list[int]:
    return list(text.encode())


def run(text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(decode, stop)
    deltas = []
    for token in ids_of(text):
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    if not stream.stopped:
        deltas.append(stream.finish())
    return deltas, stream


def test_deltas_add_up_to_the_text_and_multibyte_characters_are_never_split() -> None:
    deltas, stream = run("hello é 日 world")
    assert "".join(deltas) == "hello é 日 world" == stream.text
    assert all("\ufffd" not in delta for delta in deltas)
    assert "é" in deltas and "日" in deltas  # released whole, once their last byte arrived


def test_a_stop_string_split_across_tokens_ends_the_text_before_it() -> None:
    deltas, stream = run("hello world, stop here. more", stop=("stop here",))
    assert stream.stopped
    assert "".join(deltas) == stream.text == "hello world, "


def test_text_that_might_start_a_stop_string_is_held_back_then_released() -> None:
    stream = TextStream(decode, ("stop",))
    released = [stream.push(token) for token in ids_of("hello st")]
    assert "".join(released) == "hello "  # "st" could still become "stop"
    assert stream.push(ids_of("o")[0]) == ""
    assert stream.push(ids_of("r")[0]) == "stor"  # it did not: everything comes out, nothing retracted
    assert not stream.stopped


def test_finish_releases_held_back_text() -> None:
    stream = TextStream(decode, ("stop",))
    released = "".join(stream.push(token) for token in ids_of("hello sto"))
    assert released + stream.finish() == "hello sto"


def test_the_earliest_of_several_stop_strings_wins() -> None:
    _, stream = run("hello world, stop here.", stop=("here", "world"))
    assert stream.text == "hello "


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert filter_top_p(probs, 0.7).tolist() == torch.tensor([0.625, 0.375, 0.0, 0.0]).tolist()
    assert filter_top_p(probs, 0.1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert filter_top_p(probs, 1.0) is probs


def test_rows_sample_independently_greedy_or_seeded() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])

    def sample(seed: int) -> list[int]:
        generators = [None, torch.Generator().manual_seed(seed), None]
        return choose_next_tokens(logits, [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], generators)

    assert sample(1)[0] == 1 and sample(1)[2] == 0
    assert sample(3) == sample(3)
    assert {sample(seed)[1] for seed in range(40)} == {0, 1, 2}  # uniform logits: every token drawn
