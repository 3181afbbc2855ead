"""hf:// sources on the operator's side: the spec accepts them (and refuses revision/tokenSecret elsewhere), the
trainer config carries no token and pins a reused validation's commits, only the validation pod gets the endpoint
and the tokens (from their Secrets), and a cluster without the Validating step refuses them by field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from finetune_operator.api.finetunejob import HUB_TOKEN_ENV, training_spec_hash
from finetune_operator.builders.policy import job_refusal
from finetune_operator.builders.trainer_config import trainer_config
from finetune_operator.builders.training import training_job, validation_job
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.validation import SUMMARY_FIELDS, recorded_commits
from pydantic import ValidationError

from .support import OWNER, spec

SETTINGS = Settings(hub_endpoint="https://hub-mirror.internal")

HUB = {
    "baseModel": {"uri": "hf://acme/tiny", "revision": "v1", "tokenSecret": {"name": "hf", "key": "token"}},
    "dataset": {
        "train": {"uri": "hf://datasets/acme/chat", "revision": "main"},
        "test": {"uri": "hf://datasets/acme/chat/data/test-", "tokenSecret": {"name": "hf-data", "key": "t"}},
        "schema": "chat",
    },
}


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_hub_uris_revisions_and_tokens_are_accepted_and_refused_elsewhere() -> None:
    s = spec(**HUB)
    assert s.base_model.token_secret is not None and s.base_model.token_secret.name == "hf"
    with pytest.raises(ValidationError, match="hf:// URIs only"):
        spec(baseModel={"uri": "s3://models/tiny/", "revision": "main"})
    with pytest.raises(ValidationError, match="hf:// URIs only"):
        spec(dataset={"train": {"uri": "s3://d/t.jsonl", "tokenSecret": {"name": "x"}}, "schema": "chat"})
    with pytest.raises(ValidationError, match="empty"):
        spec(baseModel={"uri": "hf://acme//tiny"})


def test_trainer_config_has_no_token_and_pins_recorded_commits() -> None:
    s = spec(**HUB)
    config = trainer_config(s, OWNER, 1)
    assert (config["baseModel"]["uri"], config["baseModel"]["revision"]) == ("hf://acme/tiny", "v1")
    assert "tokenSecret" not in json.dumps(config)
    assert config["dataset"]["test"] == {"uri": "hf://datasets/acme/chat/data/test-"}
    commit = "a" * 40
    pinned = trainer_config(s, OWNER, 2, {"baseModel.uri": commit, "dataset.train.uri": "b" * 40})
    assert pinned["baseModel"]["revision"] == commit and pinned["dataset"]["train"]["revision"] == "b" * 40
    plain = trainer_config(spec(), OWNER, 1)
    assert "revision" not in plain["baseModel"] and "revision" not in plain["dataset"]["train"]


def test_only_the_validation_pod_gets_the_endpoint_and_each_sources_token_from_its_secret() -> None:
    s = spec(**HUB)
    checker = _env(validation_job(s, OWNER, 1, training_spec_hash(s), SETTINGS))
    assert checker["HF_ENDPOINT"]["value"] == "https://hub-mirror.internal"
    assert checker[HUB_TOKEN_ENV["baseModel.uri"]]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert checker[HUB_TOKEN_ENV["dataset.test.uri"]]["valueFrom"] == {"secretKeyRef": {"name": "hf-data", "key": "t"}}
    assert HUB_TOKEN_ENV["dataset.train.uri"] not in checker  # no tokenSecret on train: no token
    trainer = _env(training_job(s, OWNER, 1, training_spec_hash(s), SETTINGS))
    assert not [name for name in trainer if name.startswith(("HF_ENDPOINT", "FTO_HF_TOKEN"))]
    assert "HF_ENDPOINT" not in _env(validation_job(spec(), OWNER, 1, training_spec_hash(spec()), SETTINGS))


def test_the_trainer_reads_the_token_variables_the_operator_sets() -> None:
    from finetune_trainer.core.hub import FIELD_TOKEN_ENV

    assert FIELD_TOKEN_ENV == HUB_TOKEN_ENV


def test_hub_sources_are_refused_where_the_validating_step_is_off() -> None:
    refusal = job_refusal(spec(**HUB), dataclasses.replace(SETTINGS, validation=False))
    assert refusal is not None and "spec.baseModel.uri" in refusal and "validation.enabled" in refusal
    assert job_refusal(spec(), dataclasses.replace(SETTINGS, validation=False)) is None


def test_a_passed_validations_sources_give_the_commits_to_pin() -> None:
    assert "sources" in SUMMARY_FIELDS
    record = {"passed": True, "sources": [{"field": "baseModel.uri", "commit": "c" * 40, "uri": "hf://a/b"}]}
    assert recorded_commits(record) == {"baseModel.uri": "c" * 40}
    assert recorded_commits({**record, "passed": False}) == {}
    assert recorded_commits(None) == {}


def test_an_hf_base_model_is_served_from_its_cached_copy() -> None:
    from finetune_operator.finetunejob.serving import published_of
    from finetune_operator.finetunejob.validation import cached_base_model_uri

    cached = f"s3://artifacts/team-a/support-bot/hub-cache/models/acme/tiny/{'c' * 40}/"
    record = {"passed": True, "sources": [{"field": "baseModel.uri", "commit": "c" * 40, "cachedUri": cached}]}
    assert cached_base_model_uri(spec(**HUB), record) == cached
    assert published_of(spec(**HUB), 3, cached_base_model_uri(spec(**HUB), record)).base_model_uri == cached
    # the status is the tenant's to write: its cachedUri is never read, and a commit that is no hash is not used
    elsewhere = {"field": "baseModel.uri", "commit": "c" * 40, "cachedUri": "s3://someone-else/model/"}
    assert cached_base_model_uri(spec(**HUB), {"passed": True, "sources": [elsewhere]}) == cached
    climbing = {"passed": True, "sources": [{"field": "baseModel.uri", "commit": "../../someone-else"}]}
    assert cached_base_model_uri(spec(**HUB), climbing) is None
    assert cached_base_model_uri(spec(), record) is None  # an s3:// model has no copy
    assert published_of(spec(), 3, cached).base_model_uri == "s3://models/tiny/"  # an s3:// model is itself
