"""The one table of dataset formats: everything else agrees with it, and each format's rules hold.

The CRD enum, its columns rule, the operator's typed spec and docs/datasets.md are checked against
`finetune_trainer.data.formats.FORMATS` (the operator and the trainer never import each other; this test may
import both). Then detection, and the refusals a user meets, each naming the line and the fix.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_trainer.config import parse_config
from finetune_trainer.core.errors import ConfigInvalid, DatasetInvalid
from finetune_trainer.data.formats import FORMATS, detect, ignored_columns, normalize, resolve
from finetune_trainer.data.formats.base import Conversation
from finetune_trainer.data.readers import Record

from tests.unit.trainer.test_config import CONTRACT_EXAMPLE

ROOT = Path(__file__).resolve().parents[3]
CRD = yaml.safe_load((ROOT / "crds" / "finetunejob.yaml").read_text())
SPEC = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
DATASET = SPEC["properties"]["dataset"]


def records(*data: dict[str, Any]) -> list[Record]:
    return [Record(d, f"s3://b/d.jsonl line {i + 1}") for i, d in enumerate(data)]


def test_crd_enum_is_the_trainer_table() -> None:
    assert DATASET["properties"]["schema"]["enum"] == list(FORMATS)
    assert "schema" not in DATASET["required"]  # omitted = detected


def test_operator_spec_literal_is_the_trainer_table() -> None:
    from finetune_operator.api.finetunejob import DatasetSpec

    annotation = DatasetSpec.model_fields["schema_"].annotation
    literal = next(arg for arg in typing.get_args(annotation) if typing.get_origin(arg) is typing.Literal)
    assert sorted(typing.get_args(literal)) == sorted(FORMATS)
    assert DatasetSpec.model_fields["schema_"].default is None


def test_crd_columns_rule_is_derived_from_the_table() -> None:
    per = " || ".join(
        f"(self.schema == '{name}' && k in [{', '.join(repr(f) for f in fmt.fields)}])" for name, fmt in FORMATS.items()
    )
    union = ", ".join(repr(f) for f in sorted({f for fmt in FORMATS.values() for f in fmt.fields}))
    expected = f"!has(self.columns) || self.columns.all(k, has(self.schema) ? ({per}) : k in [{union}])"
    rules = [r["rule"] for r in DATASET["x-kubernetes-validations"]]
    assert expected in rules, "regenerate the CRD's dataset.columns rule from finetune_trainer.data.formats"


def test_docs_show_every_format_with_its_example() -> None:
    text = (ROOT / "docs" / "datasets.md").read_text()
    sections = dict(re.findall(r"^## `([a-z-]+)`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    assert sorted(sections) == sorted(FORMATS)
    for name, body in sections.items():
        example = re.search(r"```json\n(.*?)```", body, flags=re.S)
        assert example, f"docs/datasets.md: no json example for {name}"
        assert json.loads(example.group(1)) == FORMATS[name].example, name


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_example_normalises_and_is_detected_as_its_format(name: str) -> None:
    fmt = FORMATS[name]
    assert normalize(records(fmt.example), fmt, {})
    detection = detect(records(fmt.example, fmt.example), fmt.task, {})
    assert detection.format is fmt and detection.detected
    assert "the first 2 record(s) of dataset.train all have" in detection.reason


def test_detection_prefers_the_more_specific_format_and_reports_ignored_columns() -> None:
    rows = records({"text": "a", "label": "x"})
    assert detect(rows, "sequence-classification", {}).format.name == "classification"
    assert detect(rows, "causal-lm", {}).format.name == "text"  # classification needs the classifier task
    assert ignored_columns(rows, FORMATS["text"], {}) == ["label"]


def test_detection_with_a_column_mapping() -> None:
    rows = records({"question": "q", "answer": "a"})
    detection = detect(rows, "causal-lm", {"prompt": "question", "completion": "answer"})
    assert detection.format.name == "prompt-completion" and "question, answer" in detection.reason


def test_ambiguous_or_unknown_shape_is_an_error_naming_the_candidates() -> None:
    both = records({"prompt": "p", "completion": "c", "chosen": "x", "rejected": "y"})
    with pytest.raises(
        DatasetInvalid, match=r"line 1: the records fit several dataset schemas \(preference, prompt-completion"
    ):
        detect(both, "causal-lm", {})
    with pytest.raises(
        DatasetInvalid, match=r"line 1: cannot tell the dataset schema .*fields: answer, question.*Set dataset.schema"
    ):
        detect(records({"question": "q", "answer": "a"}), "causal-lm", {})
    assert resolve(both, "preference", "causal-lm", {}).reason == "set in dataset.schema"


def test_alpaca_input_is_part_of_the_user_turn() -> None:
    rows = normalize(records({"instruction": "sum", "input": "two and three", "output": "five"}), FORMATS["alpaca"], {})
    turns = Conversation.from_example(rows[0]).turns
    assert [(t.role, t.content, t.learn) for t in turns] == [
        ("user", "sum\n\ntwo and three", False),
        ("assistant", "five", True),
    ]
    rows = normalize(records({"instruction": "hi", "input": "", "output": "yo"}), FORMATS["alpaca"], {})
    assert Conversation.from_example(rows[0]).turns[0].content == "hi"


def chat(*messages: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    return normalize(records({"messages": list(messages), **extra}), FORMATS["chat"], {})


USER = {"role": "user", "content": "hi"}


def test_openai_chat_fields_are_kept() -> None:
    rows = chat(
        {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {**USER, "name": "ann"},
        {"role": "assistant", "content": "no", "weight": 0},
        {"role": "assistant", "content": "yes", "weight": 1, "name": "bot"},
    )
    turns = Conversation.from_example(rows[0]).turns
    assert [(t.content, t.learn, t.name) for t in turns] == [
        ("ab", False, None),
        ("hi", False, "ann"),
        ("no", False, None),
        ("yes", True, "bot"),
    ]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            {"role": "assistant", "content": "x", "weight": 2},
            r"messages\[1\]: 'weight' must be 0 \(do not learn this turn\) or 1",
        ),
        ({"role": "user", "content": "x", "weight": 1}, r"'weight' applies to assistant messages only"),
        ({"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]}, r"content\[0\]: only text parts"),
        ({"role": "assistant", "content": "x", "mood": "happy"}, r"unknown key 'mood'"),
        (
            {"role": "assistant", "function_call": {"name": "f"}},
            r"OpenAI deprecated function_call; write it as tool_calls",
        ),
        ({"role": "bot", "content": "x"}, r"role must be one of system, user, assistant, tool, got 'bot'"),
        ({"role": "assistant", "content": "x", "weight": 0}, r"all weight 0: nothing to learn from"),
        ({"role": "assistant"}, r"'content' is missing"),
    ],
)
def test_openai_chat_refusals_name_line_message_and_fix(message: dict[str, Any], error: str) -> None:
    with pytest.raises(DatasetInvalid, match=r"s3://b/d.jsonl line 1: .*" + error):
        chat(USER, message)


def test_sharegpt_speakers_and_refusals() -> None:
    fmt = FORMATS["sharegpt"]
    rows = normalize(
        records(
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "gpt", "value": "b"},
                    {"from": "user", "value": "c"},
                    {"from": "chatgpt", "value": "d"},
                ]
            }
        ),
        fmt,
        {},
    )
    assert [(t.role, t.learn) for t in Conversation.from_example(rows[0]).turns] == [
        ("user", False),
        ("assistant", True),
        ("user", False),
        ("assistant", True),
    ]
    with pytest.raises(DatasetInvalid, match=r"line 1: conversations\[1\]: 'from' must be one of human, user, gpt"):
        normalize(
            records({"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}), fmt, {}
        )
    with pytest.raises(DatasetInvalid, match="has no assistant message"):
        normalize(records({"conversations": [{"from": "human", "value": "a"}]}), fmt, {})


def test_preference_accepts_strings_and_conversations() -> None:
    fmt = FORMATS["preference"]
    rows = normalize(records({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}), fmt, {})
    assert json.loads(rows[0]["chosen"]) == [{"role": "assistant", "content": "a"}]
    assert json.loads(rows[0]["prompt"]) == [{"role": "user", "content": "q"}]
    with pytest.raises(DatasetInvalid, match="field 'rejected' is empty"):
        normalize(records({"prompt": "q", "chosen": "a", "rejected": " "}), fmt, {})


def config_with(**dataset: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(CONTRACT_EXAMPLE))
    raw["dataset"].update(dataset)
    return raw


def test_config_schema_is_optional_and_checked_against_the_table() -> None:
    raw = config_with()
    raw["dataset"].pop("schema", None)
    cfg = parse_config(raw)
    assert cfg.dataset.schema_ is None and cfg.with_schema("alpaca").dataset.schema_ == "alpaca"
    assert parse_config(config_with(schema="sharegpt", columns={"conversations": "dialog"})).dataset.columns
    with pytest.raises(ConfigInvalid, match="unknown schema 'openai'"):
        parse_config(config_with(schema="openai"))
    with pytest.raises(ConfigInvalid, match=r"columns\.prompt: schema 'alpaca' has no field 'prompt'"):
        parse_config(config_with(schema="alpaca", columns={"prompt": "q"}))
    with pytest.raises(ConfigInvalid, match=r"columns\.question: no dataset schema has a field 'question'"):
        parse_config(config_with(schema=None, columns={"question": "q"}))
