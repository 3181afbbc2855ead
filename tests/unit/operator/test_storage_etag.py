"""`storage.etagIsMd5`: the per-resource switch that reaches the trainer image's `FTO_S3_ETAG_MD5` (issue 29).

Why tested on every pod that reaches S3: the trainer, its validation step, a published model's server and fetch
step, and a ModelServer's server, fetch step and adapter sidecar all download through the trainer image's storage
module, which reads the variable; a pod left without it would refuse every object of a store whose ETags are
not MD5s as corrupt.
"""

from __future__ import annotations

from typing import Any

import pytest
from finetune_operator.api.base import invalid_spec_message
from finetune_operator.api.finetunejob import ETAG_MD5_ENV, StorageSpec, parse_spec, training_spec_hash
from finetune_operator.api.finetunesweep import parse_sweep_spec
from finetune_operator.api.modelserver import parse_server_spec
from finetune_operator.builders.common import storage_env
from finetune_operator.builders.modelserver import ServerOwner, server_bundle
from finetune_operator.builders.serving import Published, serving_bundle
from finetune_operator.builders.training import training_job, validation_job
from finetune_operator.core.settings import Settings
from finetune_operator.finetunesweep.trials import trial_manifest
from finetune_trainer.core import storage as trainer_storage
from pydantic import ValidationError

from .support import OWNER, minimal, spec

SETTINGS = Settings(trainer_image="registry.local/finetune-trainer:test")
SERVER = ServerOwner("team-a", "shared", "5e5e5e5e-1111-4222-8333-444455556666")
NOT_MD5 = {"endpoint": "http://s3.local:8333", "credentialsSecret": "s3-creds", "etagIsMd5": False}


def _etag_values(env: list[dict[str, Any]]) -> list[str]:
    return [e["value"] for e in env if e["name"] == ETAG_MD5_ENV]


def test_the_variable_is_the_one_the_trainer_reads() -> None:
    assert ETAG_MD5_ENV == trainer_storage.ETAG_MD5_ENV


def test_the_builder_emits_off_only_when_the_etag_is_no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _etag_values(storage_env(StorageSpec())) == []
    assert _etag_values(storage_env(StorageSpec(etag_is_md5=True, endpoint="http://s3:9000"))) == []
    env = storage_env(StorageSpec.model_validate(NOT_MD5))
    assert _etag_values(env) == ["off"]
    assert {e["name"] for e in env} >= {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"}  # the rest as before
    # and the trainer image reads what the pod is given as off (unset: its default, on)
    monkeypatch.setenv(ETAG_MD5_ENV, _etag_values(env)[0])
    assert trainer_storage.etag_md5() is False
    monkeypatch.delenv(ETAG_MD5_ENV)
    assert trainer_storage.etag_md5() is True


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _s3_containers(manifests: list[dict[str, Any]]) -> dict[str, list[str]]:
    """name -> the FTO_S3_ETAG_MD5 values of every container (init ones too) whose env reaches S3."""
    out = {}
    for manifest in manifests:
        if manifest["kind"] not in ("Job", "Deployment"):
            continue
        for container in _containers(manifest["spec"]["template"]["spec"]):
            env = container.get("env", [])
            if any(e["name"] == "AWS_ENDPOINT_URL" for e in env):
                out[f"{manifest['metadata']['name']}/{container['name']}"] = _etag_values(env)
    return out


def _finetunejob_pods(storage: dict[str, Any], engine: str) -> dict[str, list[str]]:
    job = spec(storage=storage, serving={"enabled": True, "engine": engine})
    published = Published(1, "causal-lm", "s3://m/base/", "s3://o/run-1/model/", True)
    return _s3_containers(
        [
            training_job(job, OWNER, 1, "h", SETTINGS),
            validation_job(job, OWNER, 1, "h", SETTINGS),
            *serving_bundle(job, OWNER, published, SETTINGS),
        ]
    )


def _model_server_pods(storage: dict[str, Any], engine: str) -> dict[str, list[str]]:
    server = parse_server_spec({"baseModelUri": "s3://models/base/", "engine": engine, "storage": storage})
    return _s3_containers(server_bundle(server, SERVER, SETTINGS))


READERS = {
    # (resource, engine): the containers that read S3 (transformers: our server reads it itself; vLLM reads the
    # local copy its fetch step made)
    ("finetunejob", "transformers"): {"support-bot-r1/trainer", "support-bot-r1-check/trainer", "support-bot/server"},
    ("finetunejob", "vllm"): {"support-bot-r1/trainer", "support-bot-r1-check/trainer", "support-bot/fetch-model"},
    ("modelserver", "transformers"): {"shared-server/server", "shared-server/adapters"},
    ("modelserver", "vllm"): {"shared-server/fetch-model", "shared-server/adapters"},
}


@pytest.mark.parametrize(("resource", "engine"), sorted(READERS))
def test_every_pod_that_reaches_s3_gets_it_only_when_false(resource: str, engine: str) -> None:
    pods = {"finetunejob": _finetunejob_pods, "modelserver": _model_server_pods}[resource]
    assert pods(NOT_MD5, engine) == {key: ["off"] for key in READERS[resource, engine]}
    assert pods({**NOT_MD5, "etagIsMd5": True}, engine) == {key: [] for key in READERS[resource, engine]}


def test_every_storage_section_accepts_the_field() -> None:
    assert spec().storage.etag_is_md5 is True
    assert spec(storage=NOT_MD5).storage.etag_is_md5 is False
    assert parse_server_spec({"baseModelUri": "/models/tiny/", "storage": NOT_MD5}).storage.etag_is_md5 is False
    sweep = {
        "template": minimal(storage=NOT_MD5),
        "parameters": [{"path": "hyperparameters.learningRate", "values": [1e-4, 2e-4]}],
    }
    trial = trial_manifest(parse_sweep_spec(sweep), OWNER, 0)  # what each trial's FineTuneJob is made from
    assert trial["spec"]["storage"]["etagIsMd5"] is False
    assert parse_spec(trial["spec"]).storage.etag_is_md5 is False


@pytest.mark.parametrize("value", ["false", "off", 0, 1, None])
def test_a_non_boolean_is_refused_naming_the_field(value: Any) -> None:
    """Strict: "false" or 0 is never read as a boolean (a lax parse would read "off" as False and 1 as True)."""
    with pytest.raises(ValidationError) as refused:
        parse_spec(minimal(storage={"etagIsMd5": value}))
    assert invalid_spec_message(refused.value).startswith("spec.storage.etagIsMd5: ")
    with pytest.raises(ValidationError) as refused:
        parse_server_spec({"baseModelUri": "/models/tiny/", "storage": {"etagIsMd5": value}})
    assert invalid_spec_message(refused.value).startswith("spec.storage.etagIsMd5: ")


def test_the_default_spelled_out_keeps_the_training_hash_and_false_is_a_storage_change() -> None:
    """A CRD upgrade's defaulting writes etagIsMd5: true into stored objects: no job may start a new run for it.
    False is a change of the storage section, which (like endpoint) starts a new run."""
    base = training_spec_hash(spec())
    assert training_spec_hash(spec(storage={"credentialsSecret": "s3-creds", "etagIsMd5": True})) == base
    assert training_spec_hash(spec(storage={"credentialsSecret": "s3-creds", "etagIsMd5": False})) != base
