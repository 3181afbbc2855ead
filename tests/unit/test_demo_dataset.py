"""The demo's dataset (`hack/demo/dataset.py`) and the pure parts of its query script (`hack/demo/query.py`).

Why: the demo's test scores are only a measure of generalisation if no test question was trained on, under any
greeting; this checks the generated files, that the check itself catches a planted copy and a near-copy, and that
the files are the same bytes on every run (the e2e test and `make demo` upload what the script builds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "hack" / "demo"
if str(DEMO) not in sys.path:
    sys.path.insert(0, str(DEMO))

import dataset  # noqa: E402  (a script folder, not a package)
import query  # noqa: E402


def test_dataset_is_deterministic_and_sized() -> None:
    first, again = dataset.build(), dataset.build()
    assert {k: dataset.jsonl(v) for k, v in first.items()} == {k: dataset.jsonl(v) for k, v in again.items()}
    assert dataset.jsonl(dataset.build(seed=7)["train"]) != dataset.jsonl(first["train"])  # the seed is used
    intents = len(dataset.INTENTS)
    assert len({i.topic for i in dataset.INTENTS}) == 6 and intents == 18
    assert len(first["train"]) == sum(len(i.train) for i in dataset.INTENTS) * dataset.COPIES == 216
    assert len(first["validation"]) == len(first["test"]) == 2 * intents
    # the first `intents` test records ask every intent once (what a small evaluation.generation.maxSamples sees)
    answers = [r["messages"][2]["content"] for r in first["test"][:intents]]
    assert sorted(answers) == sorted(i.answer for i in dataset.INTENTS)


def test_no_held_out_question_is_a_training_question() -> None:
    data = dataset.build()
    trained = {dataset.normalise(dataset.question(r)) for r in data["train"]}
    for split in ("validation", "test"):
        asked = [dataset.normalise(dataset.question(r)) for r in data[split]]
        assert not set(asked) & trained, split
    # every training question's greeting/closing is stripped by `normalise`: its core is a listed question
    cores = {dataset.normalise(q) for i in dataset.INTENTS for q in i.train}
    assert trained == cores
    # whole records too, as the trainer's own leakage count sees them
    from finetune_trainer.data.split import overlap

    assert overlap(data) == {"validation": 0, "test": 0}


def test_every_intent_answers_the_same_in_every_split() -> None:
    for split, records in dataset.build().items():
        for record in records:
            [intent] = [i for i in dataset.INTENTS if i.answer == record["messages"][2]["content"]]
            core = dataset.normalise(dataset.question(record))
            assert core in {dataset.normalise(q) for q in getattr(intent, split)}, (split, core)


@pytest.mark.parametrize(
    ("planted", "message"),
    [
        ("Hello, how do I reset my password? Thanks.", "also a training question"),
        ("How do I reset my password please?", "nearly copies"),
    ],
)
def test_the_check_refuses_a_copied_test_question(planted: str, message: str) -> None:
    data = dataset.build()
    data["test"].append(dataset.chat(planted, dataset.INTENTS[0].answer))
    with pytest.raises(ValueError, match=message):
        dataset.check_held_out(data)


def test_the_check_refuses_a_question_in_validation_and_test() -> None:
    data = dataset.build()
    data["test"].append(data["validation"][0])
    with pytest.raises(ValueError, match="both a validation and a test question"):
        dataset.check_held_out(data)


def test_main_writes_three_jsonl_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["dataset.py", "--out", str(tmp_path)])
    assert dataset.main() == 0
    lines = (tmp_path / "test.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == dataset.build()["test"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]


def test_query_reads_base_answers_and_prints_scores() -> None:
    document = {
        "generation": [
            {"prompt": f"system: {dataset.SYSTEM}\nuser: Where is it?", "answer": "a", "baseAnswer": "b"},
            {"prompt": "user: No base here", "answer": "c"},
        ]
    }
    assert query.base_answers(document) == {"Where is it?": "b"}
    lines = query.score_lines({"rouge_l": 0.1, "loss": 3.0}, {"rouge_l": 0.9, "loss": 1.25, "exact_match": 0.5})
    assert lines[1:] == [
        "exact_match         -       0.500",
        "rouge_l         0.100       0.900",
        "loss            3.000       1.250",
    ]
