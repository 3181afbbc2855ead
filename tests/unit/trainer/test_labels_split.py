"""Schema normalization errors, label mapping and the deterministic split."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.formats import FORMATS
from finetune_trainer.data.formats import normalize as normalize_records
from finetune_trainer.data.formats.base import Conversation
from finetune_trainer.data.labels import encode_labels, label_names
from finetune_trainer.data.readers import Record
from finetune_trainer.data.split import MIN_TRAIN_RECORDS, split_records


def rec(i: int, **data: object) -> Record:
    return Record(dict(data), f"s3://b/t.jsonl line {i}")


def normalize(records: list[Record], schema: str, columns: dict[str, str]) -> list[dict[str, object]]:
    return normalize_records(records, FORMATS[schema], columns)


def test_missing_column_names_available_ones() -> None:
    with pytest.raises(DatasetInvalid, match=r"line 4: missing field 'messages' \(available: id, text\)"):
        normalize([rec(4, text="x", id=1)], "chat", {})


def test_column_mapping() -> None:
    out = normalize([rec(1, q="hi", a=" there")], "prompt-completion", {"prompt": "q", "completion": "a"})
    assert out == [{"prompt": "hi", "completion": " there"}]
    with pytest.raises(DatasetInvalid, match=r"missing field 'a' \(dataset.columns maps 'completion' to it\)"):
        normalize([rec(1, q="hi")], "prompt-completion", {"prompt": "q", "completion": "a"})


def test_chat_messages_checked() -> None:
    ok = normalize(
        [rec(1, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])],
        "chat",
        {},
    )
    turns = Conversation.from_example(ok[0]).turns
    assert (turns[1].role, turns[1].content, turns[1].learn) == ("assistant", "yo", True)
    with pytest.raises(DatasetInvalid, match=r"messages\[0\]: role must be one of"):
        normalize([rec(2, messages=[{"role": "bot", "content": "x"}])], "chat", {})
    with pytest.raises(DatasetInvalid, match="no assistant message"):
        normalize([rec(3, messages=[{"role": "user", "content": "x"}])], "chat", {})


def test_label_names_sorted_numeric_or_configured() -> None:
    assert label_names(["10", "2", "2"], None, None) == ["2", "10"]
    assert label_names(["neg", "pos"], None, 2) == ["neg", "pos"]
    assert label_names(["b"], ["b", "a"], None) == ["b", "a"]
    with pytest.raises(DatasetInvalid, match="3 distinct label"):
        label_names(["a", "b", "c"], None, 2)


def test_unknown_label_names_line_and_known_labels() -> None:
    examples = [{"label": "pos"}, {"label": "meh"}]
    with pytest.raises(DatasetInvalid, match=r"line 9: unknown label 'meh' \(known labels: neg, pos\)"):
        encode_labels(examples, ["s3://b/t.jsonl line 8", "s3://b/t.jsonl line 9"], ["neg", "pos"])


def test_split_is_deterministic_disjoint_and_complete() -> None:
    records = [rec(i, text=str(i)) for i in range(100)]
    first = split_records(records, None, None, 0.1, 0.2, seed=5)
    second = split_records(records, None, None, 0.1, 0.2, seed=5)
    other = split_records(records, None, None, 0.1, 0.2, seed=6)
    assert (len(first.train), len(first.validation), len(first.test)) == (70, 10, 20)
    assert first == second and first.test != other.test
    seen = [r.origin for part in (first.train, first.validation, first.test) for r in part]
    assert sorted(seen) == sorted(r.origin for r in records)


def test_explicit_splits_are_used_as_given() -> None:
    train = [rec(i, text="t") for i in range(8)]
    test = [rec(99, text="x")]
    splits = split_records(train, None, test, 0.0, 0.5, seed=1)
    assert splits.train == train and splits.test == test and splits.validation == [] and splits.rule == ""


def test_small_split_rule_is_reported_and_too_few_to_train_on_is_refused() -> None:
    """Issue 25: 3 records at 0.1/0.1 silently became 1 / 1 / 1."""
    records = [rec(i, text=str(i)) for i in range(12)]
    splits = split_records(records, None, None, 0.1, 0.1, seed=1)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (10, 1, 1)
    assert splits.rule == ("validation 0.1 of 12 = 1.2 -> 1; test 0.1 of 12 = 1.2 -> 1; train keeps 10")
    with pytest.raises(DatasetInvalid) as error:
        split_records([rec(i, text=str(i)) for i in range(3)], None, None, 0.1, 0.1, seed=1)
    assert str(error.value) == (
        "dataset.train: 1 record(s) to train on (validation 0.1 of 3 = 0.3 -> 1 (at least 1); test 0.1 of 3 = "
        "0.3 -> 1 (at least 1); train keeps 1); a run needs at least 8. Add training records, or lower "
        "dataset.split.validation/test or give dataset.validation/test as files"
    )
    with pytest.raises(DatasetInvalid, match=r"^dataset.train: 7 record\(s\) to train on; a run needs at least 8"):
        split_records([rec(i, text=str(i)) for i in range(7)], [rec(90, text="v")], [rec(91, text="t")], 0.1, 0.1, 1)


def test_empty_splits_are_user_errors() -> None:
    with pytest.raises(DatasetInvalid, match=r"dataset\.train: empty split"):
        split_records([], None, None, 0.1, 0.1, 1)
    with pytest.raises(DatasetInvalid, match="leave none for training"):
        split_records([rec(1, text="a"), rec(2, text="b")], None, None, 0.5, 0.5, 1)
    with pytest.raises(DatasetInvalid, match=r"dataset\.test: empty split"):
        split_records([rec(1, text="a")], None, [], 0.0, 0.1, 1)
    assert MIN_TRAIN_RECORDS == 8


def test_sequence_limit_caps_at_model_positions(tmp_path: Path) -> None:
    from finetune_trainer.training.inputs import sequence_limit

    (tmp_path / "config.json").write_text('{"max_position_embeddings": 512}')
    assert sequence_limit(tmp_path, 2048) == 512
    assert sequence_limit(tmp_path, 256) == 256
    (tmp_path / "config.json").write_text("{}")
    assert sequence_limit(tmp_path, 2048) == 2048


def test_copies_of_a_record_stay_in_one_split() -> None:
    """Duplicates in the data cannot put a test record into training (issue 17: never train on the test split)."""
    records = [rec(i, text=f"t{i % 7}") for i in range(70)]  # seven distinct records, ten copies each
    splits = split_records(records, None, None, 0.1, 0.2, seed=3)
    seen = {name: {r.data["text"] for r in part} for name, part in splits.items()}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"]
    assert not seen["test"] & seen["validation"]
    assert sum(len(part) for _, part in splits.items()) == 70 and len(splits.test) >= 14


def test_overlap_counts_and_limit() -> None:
    from finetune_trainer.data.split import check_overlap, overlap

    examples = {"train": [{"t": 1}, {"t": 2}], "validation": [{"t": 3}], "test": [{"t": 1}, {"t": 4}, {"t": 5}]}
    assert overlap(examples) == {"validation": 0, "test": 1}
    with pytest.raises(DatasetInvalid, match=r"dataset\.test: 1 of its 3 record\(s\) are also in the training data"):
        check_overlap(overlap(examples), {"validation": 1, "test": 3})
    check_overlap({"validation": 0, "test": 1}, {"validation": 1, "test": 10})  # 10%: reported, not refused
