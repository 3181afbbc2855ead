"""Serving keys, pure and with a fake client: the generated key's Secret and hash, when a FineTuneJob pass makes
one, that nothing is rolled out before it exists, the NetworkPolicy's peers, and a ModelServer's admin key."""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import replace
from typing import Any

import pytest
from finetune_operator.api.labels import Names
from finetune_operator.api.modelserver import parse_server_spec
from finetune_operator.builders.apikey import (
    ANNOTATION_KEY_SHA256,
    generate_key,
    key_secret,
    recorded_sha256,
    sha256_hex,
)
from finetune_operator.builders.modelserver import ServerOwner, server_bundle, server_key_secret
from finetune_operator.builders.workload import server_network_policy
from finetune_operator.core.errors import NameTaken
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Store
from finetune_operator.finetunejob.apikey import ApiKey, key_of, needs_key
from finetune_operator.finetunejob.controller import Reconciler
from finetune_operator.finetunejob.plan import plan
from finetune_operator.modelserver.plan import key_to_generate

from .support import OWNER, spec
from .test_finetunejob_plan import GATE, SETTINGS, _done, _snap

SHA = "ab" * 32
NAME = Names.of(OWNER.name).api_key
SETTINGS_NO_LOOKUP = replace(SETTINGS, secret_check=False)  # clusterWide: no Secret lookups at all


def test_a_generated_key_is_32_random_bytes_and_its_secret_holds_it_and_its_hash() -> None:
    key, other = generate_key(), generate_key()
    assert key != other and len(base64.urlsafe_b64decode(key + "=")) == 32
    secret = key_secret({"name": "bot-api-key", "namespace": "team-a", "annotations": {"x": "y"}}, key)
    assert secret["type"] == "Opaque" and list(secret["data"]) == ["apiKey"]
    assert base64.b64decode(secret["data"]["apiKey"]).decode() == key
    assert secret["metadata"]["annotations"] == {"x": "y", ANNOTATION_KEY_SHA256: sha256_hex(key)}
    assert sha256_hex(key) == hashlib.sha256(key.encode()).hexdigest()
    assert recorded_sha256(secret) == sha256_hex(key)
    assert recorded_sha256({"metadata": {"annotations": {ANNOTATION_KEY_SHA256: "edited"}}}) == ""
    assert recorded_sha256(None) == ""


@pytest.mark.parametrize(
    ("serving", "status", "needed", "key"),
    [
        ({"enabled": True}, {}, True, None),
        ({"enabled": True}, {"serving": {"apiKeySecret": NAME, "apiKeySha256": SHA}}, False, ApiKey(NAME, SHA)),
        ({"enabled": True}, {"serving": {"apiKeySecret": NAME, "apiKeySha256": "short"}}, True, None),
        ({"enabled": True}, {"serving": {"apiKeySecret": "elsewhere", "apiKeySha256": SHA}}, True, None),
        ({"enabled": True, "apiKeySecret": "mine"}, {}, False, ApiKey("mine")),
        ({"enabled": True, "allowUnauthenticated": True}, {}, False, None),
        ({"enabled": False}, {}, False, None),
        ({"enabled": True, "server": "shared"}, {}, True, None),
    ],
)
def test_which_passes_make_a_key_and_which_key_the_server_reads(
    serving: dict[str, Any], status: dict[str, Any], needed: bool, key: ApiKey | None
) -> None:
    s = spec(serving=serving)
    assert needs_key(s, OWNER, status) is needed
    assert key_of(s, OWNER, status, None) == key
    made = ApiKey(NAME, "cd" * 32)
    if needed:
        assert key_of(s, OWNER, status, made) == made


def test_nothing_is_rolled_out_before_the_generated_key_exists_and_its_absence_is_named() -> None:
    s = spec(evaluation=GATE, serving={"enabled": True})
    job, pod = _done(1, 1.2)
    base = {"run": 1, "trainingSpecHash": plan(_snap(s, {}), SETTINGS).status["trainingSpecHash"]}
    taken = "the API key cannot be generated: Secret team-a/support-bot-api-key exists and is not ours"
    waiting = plan(_snap(s, base, jobs=[job], pods=[pod], api_key=None, api_key_problem=taken), SETTINGS)
    assert waiting.apply == [] and waiting.status["phase"] == "Publishing" and waiting.status["serving"] is None
    ready = next(c for c in waiting.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ApiKeyMissing" and "not ours" in ready["message"]
    made = plan(_snap(s, base, jobs=[job], pods=[pod], api_key=ApiKey(NAME, SHA)), SETTINGS)
    deployment = made.apply[-1]
    assert made.status["serving"] == {"apiKeySecret": NAME, "apiKeySha256": SHA}
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in server["env"] if e["name"] == "FTO_API_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": NAME, "key": "apiKey"}
    # the key's hash on the pod template: a new key rolls the pods
    assert deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_KEY_SHA256] == SHA
    # Secrets are not watched: a published job with a generated key looks for its Secret again on a timer, so
    # that deleting it gets a new key (and not only at the periodic resync)
    assert made.requeue_after == SETTINGS.key_recheck_seconds
    unlooked = plan(_snap(s, base, jobs=[job], pods=[pod], api_key=ApiKey(NAME, SHA)), SETTINGS_NO_LOOKUP)
    assert unlooked.requeue_after is None
    opened = spec(evaluation=GATE, serving={"enabled": True, "allowUnauthenticated": True})
    open_plan = plan(_snap(opened, base, jobs=[job], pods=[pod]), SETTINGS)
    (server,) = open_plan.apply[-1]["spec"]["template"]["spec"]["containers"]
    assert not [e for e in server["env"] if e["name"] == "FTO_API_KEY"] and open_plan.status["serving"] is None
    assert open_plan.requeue_after is None  # no generated key: nothing to look for


def test_the_network_policy_admits_the_own_namespace_and_the_listed_ones_on_the_serving_port() -> None:
    meta = {"name": "s", "namespace": "team-a"}
    own = server_network_policy(meta, {"app": "s"}, ())
    assert own["spec"]["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000}]}]
    assert own["spec"]["policyTypes"] == ["Ingress"] and own["spec"]["podSelector"] == {"matchLabels": {"app": "s"}}
    shared = server_network_policy(meta, {"app": "s"}, ["team-c", "team-a", "team-b", "team-c"])
    (rule,) = shared["spec"]["ingress"]
    assert rule["from"][1] == {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-b", "team-c"]}
            ]
        }
    }


def test_the_fine_tuning_apis_pods_are_admitted_when_the_chart_runs_it() -> None:
    """The API proxies a tenant's chat to its endpoint, from the operator's namespace: its pods (and only they, by
    their labels) are one more peer of every serving NetworkPolicy, a job's own and a ModelServer's."""
    api = replace(SETTINGS, api_namespace="finetune-system", api_pod_labels=("app.kubernetes.io/component=api",))
    assert api.api_pods == ("finetune-system", {"app.kubernetes.io/component": "api"})
    assert SETTINGS.api_pods is None
    expected = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "finetune-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "api"}},
    }
    s = spec(evaluation=GATE, serving={"enabled": True})
    job, pod = _done(1, 1.2)
    base = {"run": 1, "trainingSpecHash": plan(_snap(s, {}), SETTINGS).status["trainingSpecHash"]}
    for settings, peers in ((api, [{"podSelector": {}}, expected]), (SETTINGS, [{"podSelector": {}}])):
        made = plan(_snap(s, base, jobs=[job], pods=[pod], api_key=ApiKey(NAME, SHA)), settings)
        (policy,) = [m for m in made.apply if m["kind"] == "NetworkPolicy"]
        assert policy["spec"]["ingress"][0]["from"] == peers
    shared = server_bundle(parse_server_spec({"baseModelUri": "s3://models/m/"}), SERVER, api)
    (policy,) = [m for m in shared if m["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"][0]["from"][-1] == expected


SERVER = ServerOwner("team-a", "shared", "5e5e5e5e-1111-4222-8333-444455556666")


def _server_body(status: dict[str, Any] | None = None, **spec_fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": "shared", "uid": SERVER.uid},
        "spec": {"baseModelUri": "s3://models/m/", **spec_fields},
        "status": status or {},
    }


def test_a_model_server_gets_a_generated_admin_key_unless_it_names_one_or_opts_out() -> None:
    assert key_to_generate(_server_body()) == "shared-server-api-key"
    assert key_to_generate(_server_body({"apiKeySecret": "shared-server-api-key"})) == ""  # made before
    assert key_to_generate(_server_body(apiKeySecret="admin")) == ""
    assert key_to_generate(_server_body(allowUnauthenticated=True)) == ""
    assert key_to_generate(_server_body(replicas="many")) == ""  # invalid spec: nothing is made
    settings = Settings(trainer_image="registry.local/finetune-trainer:test")
    for fields, secret in (({}, "shared-server-api-key"), ({"apiKeySecret": "admin"}, "admin")):
        server = parse_server_spec({"baseModelUri": "s3://models/m/", **fields})
        assert server_key_secret(server, SERVER) == secret
        pod = server_bundle(server, SERVER, settings)[-1]["spec"]["template"]["spec"]
        for container in pod["containers"]:  # the engine and the sidecar read the same admin key
            (env,) = [e for e in container["env"] if e["name"] == "FTO_API_KEY"]
            assert env["valueFrom"]["secretKeyRef"]["name"] == secret
    opened = parse_server_spec({"baseModelUri": "s3://models/m/", "allowUnauthenticated": True})
    pod = server_bundle(opened, SERVER, settings)[-1]["spec"]["template"]["spec"]
    assert not [e for c in pod["containers"] for e in c["env"] if e["name"] == "FTO_API_KEY"]


class _Kube:
    """The two calls a key needs: create (the Secret is new, ours already, or someone else's) and a metadata read."""

    def __init__(self, outcome: str, annotation: str = SHA) -> None:
        self.outcome, self.annotation = outcome, annotation
        self.created: list[dict[str, Any]] = []

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        self.created.append(manifest)
        if self.outcome == "taken":
            raise NameTaken("Secret team-a/support-bot-api-key exists and is not ours")
        return manifest if self.outcome == "new" else None

    def get_metadata(self, *_: str) -> dict[str, Any]:
        return {"metadata": {"annotations": {ANNOTATION_KEY_SHA256: self.annotation}}}


def test_the_controller_makes_the_key_once_and_never_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    kube = _Kube("new")
    loop = Reconciler(kube, Store(), SETTINGS)  # type: ignore[arg-type]
    made = loop._generated_key(OWNER)["api_key"]
    (secret,) = kube.created
    key = base64.b64decode(secret["data"]["apiKey"]).decode()
    assert made == ApiKey(NAME, sha256_hex(key))
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == OWNER.uid and owner["controller"] is True and secret["metadata"]["namespace"] == "team-a"
    assert key not in caplog.text and "support-bot-api-key" in caplog.text
    # made before, its record lost: the hash comes back from the Secret's metadata, the key is not changed
    assert Reconciler(_Kube("ours"), Store(), SETTINGS)._generated_key(OWNER) == {"api_key": ApiKey(NAME, SHA)}  # type: ignore[arg-type]
    edited = Reconciler(_Kube("ours", "edited"), Store(), SETTINGS)._generated_key(OWNER)  # type: ignore[arg-type]
    assert "delete the Secret" in edited["api_key_problem"]
    taken = Reconciler(_Kube("taken"), Store(), SETTINGS)._generated_key(OWNER)  # type: ignore[arg-type]
    assert "not ours" in taken["api_key_problem"] and "api_key" not in taken


def test_a_shared_servers_tenant_whose_key_cannot_be_made_says_why_first() -> None:
    s = spec(evaluation=GATE, serving={"enabled": True, "server": "shared"})
    job, pod = _done(1, 1.2)
    base = {"run": 1, "trainingSpecHash": plan(_snap(s, {}), SETTINGS).status["trainingSpecHash"]}
    problem = "the API key cannot be generated: Secret team-a/support-bot-api-key exists and is not ours"
    p = plan(_snap(s, base, jobs=[job], pods=[pod], api_key=None, api_key_problem=problem), SETTINGS)
    ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], ready["message"]) == ("ApiKeyMissing", problem) and p.status["serving"] is None
