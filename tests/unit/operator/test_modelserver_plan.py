"""Shared serving without a cluster: admission and refusals, the verdict a FineTuneJob reads back, the plan of a
FineTuneJob that names a server, the ModelServer CRD against its typed model, and its objects (golden)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator.api.modelserver import ModelServerSpec, adapter_name, parse_server_spec, reference_of
from finetune_operator.api.published import Published
from finetune_operator.builders.engines import ENGINES
from finetune_operator.builders.modelserver import (
    ServerOwner,
    adapters_config_map,
    server_bundle,
)
from finetune_operator.builders.serving import serving_bundle
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.plan import Snapshot, plan
from finetune_operator.modelserver.admission import Candidate, admit, candidate_of
from finetune_operator.modelserver.plan import Replica, converged, serving_run, verdict_for

from .support import OWNER, assert_golden, spec
from .test_finetunejob_spec import _compare, _descriptions_missing

ROOT = Path(__file__).parents[3]
CRD = yaml.safe_load((ROOT / "crds" / "modelserver.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
BASE = "s3://models/smollm2/"
SERVER = ServerOwner("team-a", "shared", "5e5e5e5e-1111-4222-8333-444455556666")
SETTINGS = Settings(trainer_image="registry.local/finetune-trainer:test")
KEY_SHA = "ab" * 32


def _server(**overrides: Any) -> ModelServerSpec:
    return parse_server_spec({"baseModelUri": BASE, **overrides})


def _cand(name: str, created: str = "2026-11-30T10:00:00Z", namespace: str = "team-a", **kw: Any) -> Candidate:
    fields: dict[str, Any] = {
        "run": 1,
        "model_uri": f"s3://artifacts/{name}/run-1/model/",
        "base_model_uri": BASE,
        "adapter": True,
        "task": "causal-lm",
        "lora_rank": 16,
        "key_sha256": KEY_SHA,
    }
    fields.update(kw)
    return Candidate(namespace=namespace, name=name, created=created, **fields)


def test_model_and_crd_have_the_same_fields_and_descriptions() -> None:
    assert _compare(ModelServerSpec, SCHEMA["properties"]["spec"], "spec") == []
    assert _descriptions_missing(SCHEMA, "root") == []
    defaults = _server()
    props = SCHEMA["properties"]["spec"]["properties"]
    assert defaults.max_adapters == props["maxAdapters"]["default"]
    assert defaults.max_lora_rank == props["maxLoraRank"]["default"]
    assert defaults.engine == props["engine"]["default"] and set(props["engine"]["enum"]) == set(ENGINES)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_each_engine_gives_a_jobs_server_and_a_shared_server_the_same_container_defaults(
    engine: str, device: str
) -> None:
    """One engine entry renders both kinds of server: the same image, probes, preStop and resource defaults."""
    settings = dataclasses.replace(SETTINGS, vllm_device=device)
    job = spec(serving={"enabled": True, "engine": engine, "apiKeySecret": "k"})
    published = Published(1, "causal-lm", BASE, "s3://o/run-1/model/", True)
    own = serving_bundle(job, OWNER, published, settings)[-1]["spec"]["template"]["spec"]
    shared = server_bundle(_server(engine=engine, apiKeySecret="k"), SERVER, settings)[-1]["spec"]["template"]["spec"]
    same = ("image", "command", "ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle", "resources")
    own_server, shared_server = own["containers"][0], shared["containers"][0]
    assert {k: own_server.get(k) for k in same} == {k: shared_server.get(k) for k in same}
    engine_containers = ["server", "gateway"] if engine == "vllm" else ["server"]  # vLLM: behind its gateway
    assert [c["name"] for c in own["containers"]] == engine_containers
    assert [c["name"] for c in shared["containers"]] == [*engine_containers, "adapters"]
    if engine == "vllm":  # the same gateway, plus the tenant keys on a shared server
        own_gateway, shared_gateway = own["containers"][1], shared["containers"][1]
        others = [k for k in same if k != "command"]
        assert {k: own_gateway.get(k) for k in others} == {k: shared_gateway.get(k) for k in others}
        assert shared_gateway["command"][: len(own_gateway["command"])] == own_gateway["command"]
    assert [c["name"] for c in own.get("initContainers", [])] == [c["name"] for c in shared.get("initContainers", [])]


def test_admits_every_fitting_adapter_under_the_job_name() -> None:
    admission = admit(_server(), "team-a", "shared", [_cand("b"), _cand("a")])
    assert [a.name for a in admission.adapters] == ["a", "b"] and admission.refused == ()
    assert admission.adapters[0].to_wire() == {
        "name": "a",
        "finetuneJob": "team-a/a",
        "run": 1,
        "uri": "s3://artifacts/a/run-1/model/",
        "rank": 16,
        "keySha256": KEY_SHA,
    }


@pytest.mark.parametrize(
    ("candidate", "reason", "words"),
    [
        (_cand("full", adapter=False), "NotAnAdapter", "full or merged weights"),
        (_cand("keyless", key_sha256=""), "KeyMissing", "status.serving.apiKeySha256"),
        (_cand("other", base_model_uri="s3://models/llama/"), "BaseModelMismatch", "s3://models/llama/"),
        (_cand("big", lora_rank=64), "RankTooHigh", "rank 64"),
        (_cand("clf", task="sequence-classification"), "TaskNotSupported", "sequence-classification"),
        (_cand("bot", namespace="team-b"), "NamespaceNotAllowed", "allowedNamespaces"),
    ],
)
def test_refusals_name_the_reason(candidate: Candidate, reason: str, words: str) -> None:
    admission = admit(_server(), "team-a", "shared", [candidate])
    assert admission.adapters == ()
    (refused,) = admission.refused
    assert refused.reason == reason and words in refused.message and refused.job == candidate.job


def test_base_uri_trailing_slash_is_the_same_model() -> None:
    assert admit(_server(), "team-a", "shared", [_cand("a", base_model_uri=BASE.rstrip("/"))]).refused == ()


def test_allowed_namespace_is_admitted_under_a_prefixed_name() -> None:
    admission = admit(_server(allowedNamespaces=["team-b"]), "team-a", "shared", [_cand("bot", namespace="team-b")])
    assert [a.name for a in admission.adapters] == ["team-b/bot"]
    assert adapter_name("team-a", "bot", "team-a") == "bot"


def test_a_full_server_keeps_what_it_holds_and_admits_the_oldest_newcomer() -> None:
    server = _server(maxAdapters=2)
    old, older, newest = (
        _cand("old", "2026-11-30T10:00:00Z"),
        _cand("older", "2026-11-30T09:00:00Z"),
        _cand("new", "2026-11-30T11:00:00Z"),
    )
    first = admit(server, "team-a", "shared", [old, newest])
    assert first.names == {"old", "new"}
    # an older FineTuneJob published later does not evict the adapters already held
    later = admit(server, "team-a", "shared", [old, newest, older], held=first.names)
    assert later.names == {"old", "new"}
    (full,) = later.refused
    assert full.job == "team-a/older" and full.reason == "ServerFull" and "maxAdapters" in full.message
    # one leaves: the waiting one comes in
    assert admit(server, "team-a", "shared", [old, older], held=later.names).names == {"old", "older"}


def _body(name: str, server: str, published: dict[str, Any] | None, enabled: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": name, "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {"serving": {"enabled": enabled, "server": server}, "output": {"uri": f"s3://a/{name}/"}},
        "status": {"published": published, "serving": {"apiKeySecret": f"{name}-api-key", "apiKeySha256": KEY_SHA}}
        if published
        else {},
    }


def test_candidates_come_from_published_runs_with_serving_on() -> None:
    published = {"run": 2, "modelUri": "s3://a/bot/run-2/model/", "baseModelUri": BASE, "adapter": True}
    assert candidate_of(_body("bot", "shared", published)) == _cand(
        "bot", run=2, model_uri="s3://a/bot/run-2/model/", lora_rank=16
    )
    assert candidate_of(_body("bot", "shared", None)) is None
    assert candidate_of(_body("bot", "shared", published, enabled=False)) is None
    # the key hash comes from the job's status; a malformed one counts as none (refused as KeyMissing)
    forged = _body("bot", "shared", published)
    forged["status"]["serving"]["apiKeySha256"] = "not-a-hash"
    assert candidate_of(forged) == _cand("bot", run=2, model_uri="s3://a/bot/run-2/model/", key_sha256="")
    assert reference_of(_body("bot", "team-x/shared", None)) == ("team-x", "shared")


@pytest.mark.parametrize(
    "forged",
    [
        {"modelUri": "s3://other-tenant/their-bot/run-2/model/"},  # another bucket
        {"modelUri": "s3://a/other-bot/run-2/model/"},  # another job's folder in the same bucket
        {"modelUri": "s3://a/bot/run-1/model/"},  # another run than the one published
        {"modelUri": "/adapters/team-b-bot/run-1/"},  # a local path in the server pod
        {"run": 0, "modelUri": "s3://a/bot/run-0/model/"},
        {"run": "two"},
    ],
)
def test_a_model_outside_the_jobs_own_run_folder_is_no_candidate(forged: dict[str, Any]) -> None:
    """Defence in depth behind the FineTuneJob pass, which rewrites status.published: a status writer cannot
    make a shared server fetch anything but `<spec.output.uri>run-N/model/` of the job that names it."""
    published = {"run": 2, "modelUri": "s3://a/bot/run-2/model/", "baseModelUri": BASE, "adapter": True, **forged}
    assert candidate_of(_body("bot", "shared", published)) is None
    assert reference_of(_body("bot", "shared", None)) == ("team-a", "shared")


def test_a_run_is_served_once_every_ready_replica_has_it() -> None:
    replicas = [Replica("p1", True, {"bot": 2}, {}), Replica("p2", True, {"bot": 1}, {})]
    assert serving_run("bot", replicas) is None  # mid-swap: one replica still answers with run 1
    assert serving_run("bot", [replicas[0], Replica("p2", False, {}, {})]) == 2  # a starting pod does not count
    assert serving_run("bot", [Replica("p1", False, {"bot": 2}, {})]) is None


def _server_body(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "team-a", "name": "shared"}, "status": status}


def test_verdicts_read_back_from_the_server_status() -> None:
    key = ("team-a", "shared")
    assert verdict_for("team-a", "bot", 1, key, None).reason == "ServerNotFound"
    refused = {"refused": [{"finetuneJob": "team-a/bot", "reason": "RankTooHigh", "message": "rank 64"}]}
    assert verdict_for("team-a", "bot", 1, key, _server_body(refused)).reason == "RankTooHigh"
    entry = {"name": "bot", "finetuneJob": "team-a/bot", "run": 2, "uri": "u", "rank": 16}
    loading = {"adapters": [entry], "loaded": [{"pod": "p", "ready": True, "adapters": ["bot@1"]}], "endpoint": "E"}
    verdict = verdict_for("team-a", "bot", 2, key, _server_body(loading))
    assert verdict.reason == "Loading" and verdict.endpoint == {
        "url": "E",
        "model": "bot",
        "run": 1,
        "server": "team-a/shared",
    }
    serving = {**loading, "loaded": [{"pod": "p", "ready": True, "adapters": ["bot@2", "x@1"]}]}
    assert verdict_for("team-a", "bot", 2, key, _server_body(serving)).reason == "Serving"


def _published_status(run: int = 1) -> dict[str, Any]:
    return {
        "run": run,
        "phase": "Publishing",
        "published": {
            "run": run,
            "task": "causal-lm",
            "baseModelUri": "s3://models/tiny/",
            "modelUri": f"s3://artifacts/team-a/support-bot/run-{run}/model/",
            "adapter": True,
            "loraRank": 16,
        },
    }


def test_a_job_naming_a_server_gets_no_deployment_and_reads_its_verdict() -> None:
    from finetune_operator.api.finetunejob import training_spec_hash

    from .test_finetunejob_plan import SETTINGS as PLAN_SETTINGS
    from .test_finetunejob_plan import _done

    s = spec(serving={"enabled": True, "server": "shared"})
    job, pod = _done(1, 1.0)
    base = {"owner": OWNER, "generation": 1, "spec": s, "now": "2026-11-30T10:00:00Z", "jobs": [job], "pods": [pod]}
    first = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    missing = plan(Snapshot(status=first, **base), PLAN_SETTINGS)
    assert missing.apply == [] and missing.status["published"]["run"] == 1
    ready = next(c for c in missing.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ServerNotFound"
    entry = {"name": OWNER.name, "finetuneJob": f"team-a/{OWNER.name}", "run": 1, "uri": "u", "rank": 16}
    status = {
        "adapters": [entry],
        "loaded": [{"pod": "p", "ready": True, "adapters": [f"{OWNER.name}@1"]}],
        "endpoint": "http://shared-server.team-a.svc:8000/v1",
    }
    served = plan(Snapshot(status=missing.status, server=_server_body(status), **base), PLAN_SETTINGS)
    assert served.apply == [] and served.status["phase"] == "Serving"
    assert served.status["endpoint"]["model"] == OWNER.name and served.status["endpoint"]["server"] == "team-a/shared"


def test_converged_needs_every_replica_to_hold_exactly_the_list() -> None:
    admission = admit(_server(), "team-a", "shared", [_cand("a")])
    assert converged(admission, [Replica("p", True, {"a": 1}, {})])
    assert not converged(admission, [Replica("p", True, {"a": 1, "gone": 3}, {})])
    assert not converged(admission, [])


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_server_bundle_matches_golden(engine: str) -> None:
    server = _server(
        engine=engine,
        replicas=2,
        apiKeySecret="server-key",
        storage={"endpoint": "http://s3.local:8333", "credentialsSecret": "s3-creds"},
        resources={"limits": {"nvidia.com/gpu": 0}} if engine == "vllm" else {},
    )
    assert_golden(f"modelserver/{engine}.yaml", server_bundle(server, SERVER, SETTINGS))


def test_desired_list_matches_golden() -> None:
    admission = admit(_server(), "team-a", "shared", [_cand("a"), _cand("b", run=3)])
    manifest = adapters_config_map(SERVER, admission.adapters)
    assert json.loads(manifest["data"]["adapters.json"])["server"] == "team-a/shared"
    assert_golden("modelserver/adapters.yaml", manifest)


def test_only_the_sidecar_gets_a_token_and_its_role_names_its_two_config_maps() -> None:
    bundle = server_bundle(_server(), SERVER, SETTINGS)
    role = next(m for m in bundle if m["kind"] == "Role")
    assert {tuple(r["resourceNames"]) for r in role["rules"]} == {
        ("shared-server-adapters",),
        ("shared-server-loaded",),
    }
    assert all(v in (["get"], ["get", "patch"]) for v in (r["verbs"] for r in role["rules"]))
    pod = next(m for m in bundle if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {c["name"]: [m["name"] for m in c["volumeMounts"]] for c in pod["containers"]}
    assert "sync-token" in mounts["adapters"] and "sync-token" not in mounts["server"]
