"""A pod waiting in CreateContainerConfigError for a Secret or key the spec names, told by the field that names it
(finetunejob/secret_refs.py), through the one container-config path every pod's waiting reason takes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from finetune_operator.api.finetunejob import placement_spec_hash, training_spec_hash, validation_spec_hash
from finetune_operator.api.labels import COMPONENT_VALIDATOR
from finetune_operator.core.observed import JobObs, PodObs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.plan import Snapshot, plan, secrets_to_check
from finetune_operator.finetunejob.secret_refs import secret_problem

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test")


def hub_spec(**model: Any) -> Any:
    return spec(
        baseModel={"uri": "hf://acme/gated-llama", "tokenSecret": {"name": "hf-token"}, **model},
        dataset={
            "train": {"uri": "hf://datasets/acme/chat", "tokenSecret": {"name": "hf-data", "key": "hf"}},
            "schema": "chat",
        },
    )


def test_a_missing_token_secret_names_the_field_the_secret_and_the_fix() -> None:
    problem = secret_problem(hub_spec(), "team-a", 'secret "hf-token" not found')
    assert problem is not None
    assert problem.startswith("baseModel.tokenSecret names Secret 'hf-token', which does not exist in namespace team-a")
    assert "kubectl -n team-a create secret generic hf-token --from-literal=token=..." in problem
    assert "no attempt is used" in problem
    data = secret_problem(hub_spec(), "team-a", 'secret "hf-data" not found')
    assert data is not None and data.startswith("dataset.train.tokenSecret names Secret 'hf-data'")


def test_a_missing_key_names_the_field_and_its_key() -> None:
    problem = secret_problem(hub_spec(), "team-a", "couldn't find key hf in Secret team-a/hf-data")
    assert problem is not None
    assert "Secret 'hf-data' in namespace team-a has no key 'hf', which dataset.train.tokenSecret names" in problem
    assert "set dataset.train.tokenSecret.key" in problem
    storage = secret_problem(hub_spec(), "team-a", "couldn't find key AWS_SECRET_ACCESS_KEY in Secret team-a/s3-creds")
    assert storage is not None and "storage.credentialsSecret" in storage


def test_one_secret_named_by_two_fields_names_both_and_other_messages_are_left_alone() -> None:
    shared = spec(
        baseModel={"uri": "hf://acme/gated-llama", "tokenSecret": {"name": "hf-token"}},
        dataset={"train": {"uri": "hf://datasets/acme/chat", "tokenSecret": {"name": "hf-token"}}, "schema": "chat"},
    )
    problem = secret_problem(shared, "team-a", 'secret "hf-token" not found')
    assert problem is not None and problem.startswith(
        "baseModel.tokenSecret and dataset.train.tokenSecret name Secret 'hf-token'"
    )
    assert secret_problem(shared, "team-a", 'secret "someone-else" not found') is None
    assert secret_problem(shared, "team-a", 'configmap "support-bot-r1-config" not found') is None


def test_the_validation_pod_waiting_for_a_token_secret_is_secret_missing_on_the_job_and_uses_no_attempt() -> None:
    s = hub_spec()
    job = JobObs("support-bot-r1-check", 1, COMPONENT_VALIDATOR, active=1, placement_hash=placement_spec_hash(s))
    waiting = PodObs(
        "support-bot-r1-check-x",
        1,
        component=COMPONENT_VALIDATOR,
        phase="Pending",
        waiting_reason="CreateContainerConfigError",
        waiting_message='secret "hf-token" not found',
    )
    snapshot = Snapshot(
        owner=OWNER,
        generation=1,
        spec=s,
        status={"run": 1, "trainingSpecHash": training_spec_hash(s)},
        now="2026-11-30T10:00:00Z",
        jobs=[job],
        pods=[waiting],
    )
    p = plan(snapshot, SETTINGS)
    assert p.status["phase"] == "Pending" and p.status["error"]["code"] == "SecretMissing", json.dumps(p.status)
    assert "baseModel.tokenSecret" in p.status["error"]["message"] and "'hf-token'" in p.status["error"]["message"]
    assert p.delete == [] and p.create == []  # the pod keeps waiting: no Job is replaced, no attempt is used
    assert p.requeue_after == SETTINGS.secret_recheck_seconds


def test_token_secrets_are_looked_up_before_the_validation_job_only() -> None:
    s = hub_spec()
    status = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    fresh = Snapshot(owner=OWNER, generation=1, spec=s, status=status, now="2026-11-30T10:00:00Z")
    assert secrets_to_check(fresh, SETTINGS) == ["s3-creds", "hf-token", "hf-data"]
    checked = {**status, "validation": {"passed": True, "key": validation_spec_hash(s), "run": 1}}
    reused = Snapshot(owner=OWNER, generation=1, spec=s, status=checked, now="2026-11-30T10:00:00Z")
    assert secrets_to_check(reused, SETTINGS) == ["s3-creds"]  # the training pods never read the tokens
    job = JobObs("support-bot-r1-check", 1, COMPONENT_VALIDATOR, active=1, placement_hash=placement_spec_hash(s))
    assert secrets_to_check(replace(fresh, jobs=[job]), SETTINGS) == []  # its pod tells (the waiting message)


def test_an_absent_token_secret_holds_the_validation_job_back_naming_the_field() -> None:
    s = hub_spec()
    status = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    snapshot = Snapshot(
        owner=OWNER,
        generation=1,
        spec=s,
        status=status,
        now="2026-11-30T10:00:00Z",
        secret_present=False,
        absent_secrets=("hf-data",),
    )
    p = plan(snapshot, SETTINGS)
    assert not [m for m in p.create if m["kind"] == "Job"]
    error = p.status["error"]
    assert error["code"] == "SecretMissing" and error["message"].startswith(
        "dataset.train.tokenSecret names Secret 'hf-data', which does not exist in namespace team-a"
    )
    assert "The run's Job is made once the Secret exists" in error["message"]
    storage = plan(replace(snapshot, absent_secrets=("s3-creds", "hf-data")), SETTINGS).status["error"]["message"]
    assert storage.startswith("waiting for Secret 's3-creds'")  # the storage Secret's own words come first
