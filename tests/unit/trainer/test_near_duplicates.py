"""Near-copies of training records in held-out splits (issue 25): normalised text, MinHash LSH, exact Jaccard."""

from __future__ import annotations

import json

import pytest
from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.near_duplicates import THRESHOLD, near_pairs, normalise, shingles, text_of
from finetune_trainer.data.split import check_overlap, overlap

SYSTEM = "You are the support assistant of an online shop. Answer briefly and politely, in the customer's language."
ANSWERS = {
    "password": "Open Settings, choose Security, then Reset password. We email you a link that works for one hour.",
    "refund": "Refunds are free within 30 days. Open Orders, pick the order and press Return.",
    "invoice": "Open Orders, pick the order and press Invoice to download a PDF receipt.",
}


def chat(question: str, topic: str) -> dict[str, str]:
    """A normalised chat example, as formats.normalize makes it (the conversation as one JSON string)."""
    turns = [
        {"role": "system", "content": SYSTEM, "learn": False},
        {"role": "user", "content": question, "learn": False},
        {"role": "assistant", "content": ANSWERS[topic], "learn": True},
    ]
    return {"conversation": json.dumps({"turns": turns, "tools": None})}


def test_text_is_normalised_and_read_from_inside_the_conversation() -> None:
    assert normalise("Hello,  WORLD! ﬁne_tune") == "hello world fine tune"
    assert text_of(chat("Where is my invoice?", "invoice")).startswith("system " + SYSTEM)
    assert shingles("one two") == {"one two"} and len(shingles("a b c d e")) == 3


def test_greeting_variants_are_near_copies_and_paraphrases_are_not() -> None:
    train = [
        chat("How do I reset my password?", "password"),
        chat("I want my money back for the broken kettle.", "refund"),
        chat("Can you send me the invoice of my last order?", "invoice"),
    ]
    train += [
        chat(f"Question number {i} about something else entirely, with its own words.", "refund") for i in range(8)
    ]
    test = [
        chat("Hello there. How do I reset my password?", "password"),  # a greeting added: a near-copy
        chat("Can you send me the invoice of my last order, please?", "invoice"),  # a closing added
        chat("I lost my password and cannot log in. What should I do?", "password"),  # a paraphrase
        chat("How do I reset my password?", "password"),  # an exact copy: counted by the exact check only
    ]
    pairs = near_pairs({"train": train, "validation": [], "test": test})
    assert [(p.held_out, p.train) for p in pairs["test"]] == [(0, 0), (1, 2)]
    assert all(p.similarity >= THRESHOLD for p in pairs["test"]) and pairs["validation"] == []
    assert overlap({"train": train, "test": test}) == {"validation": 0, "test": 1}


def test_a_shared_system_prompt_does_not_make_records_alike() -> None:
    """Without leaving out the shingles most records share, a long system prompt would make every pair similar."""
    long_system = " ".join(f"rule {i}: be kind and precise." for i in range(60))
    train = [
        {"prompt": f"{long_system} question {i} about topic {i * 7}", "completion": f"answer {i}"} for i in range(20)
    ]
    test = [{"prompt": f"{long_system} question 99 about topic 3", "completion": "answer 99"}]
    assert near_pairs({"train": train, "test": test})["test"] == []


def test_near_copies_count_towards_the_overlap_limit() -> None:
    check_overlap({"test": 0}, {"test": 10}, {"test": 1})  # 10%: reported, not refused
    with pytest.raises(DatasetInvalid) as error:
        check_overlap({"test": 1}, {"test": 10}, {"test": 1}, {"test": "s3://b/t line 1 ~ s3://b/d line 7 (0.91)"})
    assert str(error.value).startswith(
        "dataset.test: 1 of its 10 record(s) are also in the training data and 1 more nearly copy a training "
        "record (s3://b/t line 1 ~ s3://b/d line 7 (0.91)) (by content; more than 10%)"
    )
