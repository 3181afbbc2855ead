"""The engine on its own: sequences joining a running batch, cancellation, shutdown."""

from __future__ import annotations

import queue
import threading
from typing import Any

from finetune_trainer.serving.server.engine import Engine
from finetune_trainer.serving.server.events import Event, Failed, Finished, SamplingParams, TextDelta


class Collector:
    """A sink that records events and signals the end of its sequence."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.deltas: list[str] = []
        self.end: Finished | Failed | None = None
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.deltas.append(event.text)
        else:
            self.end = event
            self.done.set()
        self.events.put(event)

    def result(self) -> tuple[str, Finished | Failed | None]:
        assert self.done.wait(60)
        return "".join(self.deltas), self.end


def generate(engine: Engine, prompt: str, max_tokens: int) -> tuple[str, Finished | Failed | None]:
    collector = Collector()
    ids = engine.loaded.tokenizer.encode(prompt)
    engine.submit(ids, SamplingParams(max_tokens, temperature=0.0), collector)
    return collector.result()


def test_a_sequence_joining_a_running_batch_gets_the_same_text(lm_engine: Any) -> None:
    alone_long = generate(lm_engine, "the quick brown", 60)
    alone_short = generate(lm_engine, "hello world", 12)
    long_run = Collector()
    ids = lm_engine.loaded.tokenizer.encode("the quick brown")
    lm_engine.submit(ids, SamplingParams(60, temperature=0.0), long_run)
    long_run.events.get(timeout=60)  # the long sequence is generating: the next one joins its batch
    assert generate(lm_engine, "hello world", 12) == alone_short
    assert long_run.result() == alone_long
    assert isinstance(alone_long[1], Finished) and alone_long[1].completion_tokens > 20  # outlives the join


def test_a_cancelled_sequence_stops_and_others_continue(lm_engine: Any) -> None:
    collector = Collector()
    handle = lm_engine.submit(
        lm_engine.loaded.tokenizer.encode("the lazy dog"), SamplingParams(200, temperature=0.0), collector
    )
    collector.events.get(timeout=60)
    handle.cancel()
    _, end = generate(lm_engine, "hello", 5)
    assert isinstance(end, Finished) and end.completion_tokens >= 1
    assert not collector.done.is_set()  # dropped without a Finished event: nobody is listening
    assert len(collector.deltas) < 150


def test_stop_fails_waiting_and_new_sequences(lm_engine: Any) -> None:
    engine = Engine(lm_engine.loaded, max_batch_size=2).start()
    engine.stop()
    collector = Collector()
    engine.submit([1, 2, 3], SamplingParams(4, temperature=0.0), collector)
    _, end = collector.result()
    assert isinstance(end, Failed) and "shutting down" in end.message


def test_greedy_text_equals_transformers_generate(lm_engine: Any) -> None:
    import torch

    tokenizer = lm_engine.loaded.tokenizer
    for prompt in ("the quick brown", "café déjà"):
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            output = lm_engine.loaded.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids)),
                max_new_tokens=24,
                do_sample=False,
                pad_token_id=lm_engine.loaded.pad_token_id,
            )
        expected = tokenizer.decode(output[0, len(ids) :].tolist(), skip_special_tokens=True)
        assert generate(lm_engine, prompt, 24)[0] == expected
