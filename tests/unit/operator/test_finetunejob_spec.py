"""The typed spec: parsing, agreement with the CRD schema, and which changes count as training changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator.api.base import invalid_spec_message, without_unknown_fields
from finetune_operator.api.finetunejob import (
    FineTuneJobSpec,
    parse_spec,
    placement_spec_hash,
    training_spec_hash,
    validation_spec_hash,
)
from finetune_operator.api.modelserver import parse_server_spec
from pydantic import BaseModel, ValidationError

from .support import EXAMPLES, example, minimal, spec

CRD = yaml.safe_load((Path(__file__).parents[3] / "crds" / "finetunejob.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _compare(model: type[BaseModel], schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    props = schema.get("properties", {})
    if set(fields) != set(props):
        problems.append(f"{where}: model {sorted(set(fields) - set(props))} vs CRD {sorted(set(props) - set(fields))}")
    for name, field in fields.items():
        inner = _model_of(field.annotation)
        sub = props.get(name, {})
        sub = sub.get("items", sub) if sub.get("type") == "array" else sub
        if inner is not None and "properties" in sub:
            problems += _compare(inner, sub, f"{where}.{name}")
    return problems


def test_model_and_crd_have_the_same_fields() -> None:
    assert _compare(FineTuneJobSpec, SCHEMA["properties"]["spec"], "spec") == []


def _descriptions_missing(schema: dict[str, Any], where: str) -> list[str]:
    missing = [] if "description" in schema or where.endswith((".metadata", "additionalProperties")) else [where]
    for name, sub in schema.get("properties", {}).items():
        missing += _descriptions_missing(sub, f"{where}.{name}")
    if "items" in schema and "properties" in schema["items"]:
        missing += [m for m in _descriptions_missing(schema["items"], f"{where}[]") if m != f"{where}[]"]
    return missing


def test_every_crd_field_has_a_description() -> None:
    assert _descriptions_missing(SCHEMA, "root") == []


def test_defaults_match_the_crd() -> None:
    parsed = spec()
    assert parsed.method.lora.rank == 16 and parsed.hyperparameters.learning_rate == 2e-4
    assert parsed.resources.gpus == 1 and parsed.serving.enabled is False and parsed.dataset.split.test == 0.1


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_parses(path: Path) -> None:
    parse_spec(example(path.stem)["spec"])


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_spec(minimal(learningRate=0.1))


def _refusal(raw: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        parse_spec(raw)
    return caught.value


def test_a_newer_crds_defaulted_fields_can_be_read_away_with_their_names() -> None:
    """What a CRD upgrade's structural defaulting adds (top level and nested) is dropped, named spec.<path>, and
    the rest reads exactly as before (the same training hash: no new run)."""
    raw = minimal(retention="keep")
    raw["resources"] = {"gpus": 1, "queueHint": "x"}
    stripped, names = without_unknown_fields(raw, _refusal(raw)) or ({}, [])
    assert sorted(names) == ["spec.resources.queueHint", "spec.retention"]
    before = minimal(resources={"gpus": 1})
    assert stripped == before and raw["retention"] == "keep"  # the caller's body is not changed
    assert training_spec_hash(parse_spec(stripped)) == training_spec_hash(parse_spec(before))


def test_a_wrong_value_beside_an_unknown_field_is_never_read_away() -> None:
    raw = minimal(retention="keep", hyperparameters={"learningRate": "fast"})
    assert without_unknown_fields(raw, _refusal(raw)) is None


UNSAFE_URIS = ("s3://models/../team-b/llama/", "s3://models//llama/", "s3://models/./llama/", "s3://models/x/..")


SECTIONS = {
    "spec.baseModel.uri": lambda uri: {"baseModel": {"uri": uri}},
    "spec.dataset.train.uri": lambda uri: {"dataset": {"train": {"uri": uri}, "schema": "chat"}},
    "spec.dataset.test.uri": lambda uri: {
        "dataset": {"train": {"uri": "s3://d/t.jsonl"}, "test": {"uri": uri}, "schema": "chat"}
    },
    "spec.output.uri": lambda uri: {"output": {"uri": uri.rstrip("/") + "/"}},
}


@pytest.mark.parametrize("uri", UNSAFE_URIS)
@pytest.mark.parametrize("field", SECTIONS)
def test_uris_with_empty_dot_or_dot_dot_segments_are_refused_naming_the_field(uri: str, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_spec(minimal(**SECTIONS[field](uri)))
    assert invalid_spec_message(refused.value).startswith(f"{field}: ") and "segment" in str(refused.value)


def test_a_model_servers_base_model_uri_refuses_the_same_segments() -> None:
    assert parse_server_spec({"baseModelUri": "/models/tiny/"}).base_model_uri == "/models/tiny/"
    for uri in (*UNSAFE_URIS, "/models/../etc/", "/models//x"):
        with pytest.raises(ValidationError, match="segment"):
            parse_server_spec({"baseModelUri": uri})


def _hash(**overrides: Any) -> str:
    digest: str = training_spec_hash(spec(**overrides))
    return digest


def test_training_changes_change_the_hash() -> None:
    base = _hash()
    assert _hash(hyperparameters={"learningRate": 1e-4}) != base
    assert _hash(dataset={"train": {"uri": "s3://data/other.jsonl"}, "schema": "chat"}) != base
    assert _hash(resources={"gpus": 2}) != base
    assert _hash(evaluation={"compareBaseModel": True}) != base


def test_serving_gate_suspend_and_queue_changes_keep_the_hash() -> None:
    base = _hash()
    assert _hash(serving={"enabled": True, "replicas": 3}) == base
    assert _hash(evaluation={"gate": [{"metric": "test_loss", "max": 2}]}) == base
    assert _hash(suspend=True) == base
    assert _hash(queueName="q") == base
    assert _hash(podMetadata={"labels": {"a": "b"}}) == base


def test_placement_changes_keep_the_training_hash_and_change_the_placement_hash() -> None:
    base, placement = _hash(), placement_spec_hash(spec())
    for changed in (
        {"resources": {"memory": "64Gi"}},
        {"resources": {"cpu": "8", "shmSize": "16Gi"}},
        {"resources": {"nodeSelector": {"pool": "h100"}}},
        {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}},
        {"resources": {"priorityClassName": "high"}},
        {"podMetadata": {"labels": {"team": "a"}}},
        {"queueName": "q"},
    ):
        assert _hash(**changed) == base, changed
        assert placement_spec_hash(spec(**changed)) != placement, changed
    assert placement_spec_hash(spec(resources={"gpus": 2})) == placement  # world size: a training change
    assert placement_spec_hash(spec(hyperparameters={"learningRate": 1e-4})) == placement


def test_selection_and_generation_are_training_changes_and_checked_again() -> None:
    base, checked = _hash(), validation_spec_hash(spec())
    for changed in (
        {"intervalSteps": 50},
        {"intervalSteps": 50, "earlyStopping": {"patience": 2}},
        {"generation": {"maxSamples": 20}},
    ):
        assert _hash(evaluation=changed) != base, changed  # another checkpoint or other test metrics
    assert _hash(evaluation={"generation": {"maxSamples": 20}}) != _hash(evaluation={"generation": {}})
    # checked again: generation needs a schema with references, intervalSteps a validation split
    assert validation_spec_hash(spec(evaluation={"generation": {}})) != checked
    assert validation_spec_hash(spec(evaluation={"intervalSteps": 5})) != checked
    assert validation_spec_hash(spec(evaluation={"gate": [{"metric": "test_rouge_l", "min": 0.5}]})) == checked


def test_spelled_out_defaults_keep_the_hash() -> None:
    assert _hash(hyperparameters={"learningRate": 2e-4, "epochs": 3}) == _hash()
