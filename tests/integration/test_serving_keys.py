"""Serving is secure by default, on a real API server (issue #24, item 5): an endpoint without a key exists only
when the manifest says `allowUnauthenticated: true`; otherwise the operator generates a key Secret owned by the
FineTuneJob or ModelServer, the server pods read it like a user's apiKeySecret, the status names it, a shared
server's desired list carries the hash of each job's own key, and a NetworkPolicy lets only the server's
namespace (and a ModelServer's allowedNamespaces) reach the serving port."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from kubernetes import client

from .conftest import Jobs, Operator, ftj_manifest, success_message, wait_for
from .test_modelserver import _create_server, _job, _server, _server_status

pytestmark = pytest.mark.cluster

GATE = {"gate": [{"metric": "test_loss", "max": 1.8}]}


def _train(jobs: Jobs, namespace: str, name: str) -> None:
    pod = jobs.running_pod(namespace, f"{name}-r1")
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message(1.2))


def _key(jobs: Jobs, namespace: str, secret: str) -> str:
    """What a user does: kubectl get secret NAME -o jsonpath='{.data.apiKey}' | base64 -d."""
    data = jobs.cluster.core.read_namespaced_secret(secret, namespace).data
    return base64.b64decode(data["apiKey"]).decode()


def _server_env(deployment: Any, container: str = "server") -> dict[str, Any]:
    pod = deployment.spec.template.spec
    (server,) = [c for c in pod.containers if c.name == container]
    return {e.name: e for e in server.env or []}


def _serving_deployment(jobs: Jobs, namespace: str, name: str) -> Any:
    return jobs.cluster.apps.read_namespaced_deployment(name, namespace)


def test_no_key_and_no_opt_out_gets_a_generated_key_owned_by_the_job(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, ftj_manifest("keyed", evaluation=GATE, serving={"enabled": True}))
    _train(jobs, namespace, "keyed")
    status = jobs.wait_phase(namespace, "keyed", "Serving", timeout=90)
    assert status["serving"]["apiKeySecret"] == "keyed-api-key"
    secret = jobs.cluster.core.read_namespaced_secret("keyed-api-key", namespace)
    uid = jobs.get(namespace, "keyed")["metadata"]["uid"]
    (owner,) = secret.metadata.owner_references
    assert owner.uid == uid and owner.controller is True and owner.kind == "FineTuneJob"
    assert secret.metadata.labels["finetune.dev/job-uid"] == uid
    key = _key(jobs, namespace, "keyed-api-key")
    assert len(key) >= 43  # 32 random bytes, url-safe
    assert status["serving"]["apiKeySha256"] == hashlib.sha256(key.encode()).hexdigest()
    # the key is nowhere but in the Secret: not in the status, the serving ConfigMap or the Deployment
    assert key not in json.dumps(jobs.get(namespace, "keyed"))
    assert key not in json.dumps(jobs.cluster.core.read_namespaced_config_map("keyed-serve", namespace).data)
    env = _server_env(_serving_deployment(jobs, namespace, "keyed"))
    ref = env["FTO_API_KEY"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("keyed-api-key", "apiKey")
    # the NetworkPolicy: only pods of this namespace reach the serving port
    policy = jobs.cluster.networking.read_namespaced_network_policy("keyed", namespace)
    assert policy.metadata.owner_references[0].uid == uid
    (rule,) = policy.spec.ingress
    assert [p.pod_selector.match_labels for p in rule._from] == [None] and rule._from[0].namespace_selector is None
    assert [(p.protocol, p.port) for p in rule.ports] == [("TCP", 8000)]
    assert policy.spec.pod_selector.match_labels == {"finetune.dev/job-uid": uid, "finetune.dev/component": "serving"}
    # the status lost (a restore without status): the operator finds the hash on its own Secret, same key
    jobs.cluster.custom.patch_namespaced_custom_object_status(
        "finetune.dev", "v1alpha1", namespace, "finetunejobs", "keyed", {"status": {"serving": None}}
    )
    wait_for(
        "the key's record put back",
        lambda: (jobs.get(namespace, "keyed").get("status") or {}).get("serving") == status["serving"],
        timeout=30,
    )
    assert _key(jobs, namespace, "keyed-api-key") == key
    # deleting the Secret is how a user gets a new key: made again, recorded, and the pods roll onto it
    old_hash = status["serving"]["apiKeySha256"]
    jobs.cluster.core.delete_namespaced_secret("keyed-api-key", namespace)

    def new_record() -> dict[str, Any] | None:
        record = (jobs.get(namespace, "keyed").get("status") or {}).get("serving") or {}
        return record if record.get("apiKeySha256") not in (None, old_hash) else None

    record = wait_for("a new key", new_record, timeout=60)
    new_key = _key(jobs, namespace, "keyed-api-key")
    assert new_key != key and record["apiKeySha256"] == hashlib.sha256(new_key.encode()).hexdigest()
    wait_for(
        "the pod template on the new key",
        lambda: (
            _serving_deployment(jobs, namespace, "keyed").spec.template.metadata.annotations.get(
                "finetune.dev/api-key-sha256"
            )
            == record["apiKeySha256"]
        ),
        timeout=30,
    )


def test_the_explicit_opt_out_serves_without_any_key(operator: Operator, jobs: Jobs, namespace: str) -> None:
    serving = {"enabled": True, "allowUnauthenticated": True}
    jobs.create(namespace, ftj_manifest("open", evaluation=GATE, serving=serving))
    _train(jobs, namespace, "open")
    status = jobs.wait_phase(namespace, "open", "Serving", timeout=90)
    assert status.get("serving") is None
    assert "FTO_API_KEY" not in _server_env(_serving_deployment(jobs, namespace, "open"))
    with pytest.raises(client.ApiException) as missing:
        jobs.cluster.core.read_namespaced_secret("open-api-key", namespace)
    assert missing.value.status == 404


@pytest.mark.parametrize(
    ("serving", "words"),
    [
        ({"enabled": True, "apiKeySecret": "mine", "allowUnauthenticated": True}, "exclude each other"),
        ({"enabled": True, "server": "shared", "apiKeySecret": "mine"}, "its own generated key"),
        ({"enabled": True, "server": "shared", "allowUnauthenticated": True}, "the server's allowUnauthenticated"),
    ],
)
def test_a_key_and_the_opt_out_together_are_refused_by_the_api_server(
    crd: str, jobs: Jobs, namespace: str, serving: dict[str, Any], words: str
) -> None:
    with pytest.raises(client.ApiException) as refused:
        jobs.create(namespace, ftj_manifest("both", serving=serving))
    assert refused.value.status == 422 and words in refused.value.body


def test_a_model_server_with_a_key_and_the_opt_out_is_refused(crd: str, jobs: Jobs, namespace: str) -> None:
    with pytest.raises(client.ApiException) as refused:
        _create_server(jobs, namespace, _server("both", apiKeySecret="mine", allowUnauthenticated=True))
    assert refused.value.status == 422 and "exclude each other" in refused.value.body


def test_someone_elses_secret_under_the_keys_name_is_never_overwritten(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    foreign = client.V1Secret(
        metadata=client.V1ObjectMeta(name="taken-api-key"), string_data={"apiKey": "theirs", "other": "kept"}
    )
    jobs.cluster.core.create_namespaced_secret(namespace, foreign)
    jobs.create(namespace, ftj_manifest("taken", evaluation=GATE, serving={"enabled": True}))
    _train(jobs, namespace, "taken")

    def refused() -> dict[str, Any] | None:
        status = jobs.get(namespace, "taken").get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        return status if ready.get("reason") == "ApiKeyMissing" else None

    status = wait_for("Ready=False naming the Secret in the way", refused, timeout=90)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "taken-api-key" in ready["message"] and "not ours" in ready["message"]
    assert status.get("serving") is None and status["phase"] == "Publishing"
    secret = jobs.cluster.core.read_namespaced_secret("taken-api-key", namespace)
    assert not secret.metadata.owner_references and _key(jobs, namespace, "taken-api-key") == "theirs"
    assert set(secret.data) == {"apiKey", "other"}
    with pytest.raises(client.ApiException) as missing:  # nothing is served reading someone else's Secret
        _serving_deployment(jobs, namespace, "taken")
    assert missing.value.status == 404


def test_a_shared_servers_entry_carries_the_hash_of_the_jobs_own_key_and_its_policy_names_its_tenants(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    _create_server(jobs, namespace, _server("shared", allowedNamespaces=["team-z"]))
    jobs.create(namespace, _job("tenant", "shared"))

    def entry() -> dict[str, Any] | None:
        try:
            config = jobs.cluster.core.read_namespaced_config_map("shared-server-adapters", namespace)
        except client.ApiException:
            return None
        adapters = json.loads(config.data["adapters.json"])["adapters"]
        return adapters[0] if adapters else None

    listed = wait_for("the adapter in the desired list", entry, timeout=90)
    assert set(listed) == {"name", "finetuneJob", "run", "uri", "rank", "keySha256"}
    status = jobs.get(namespace, "tenant")["status"]
    assert status["serving"]["apiKeySecret"] == "tenant-api-key"
    key = _key(jobs, namespace, "tenant-api-key")
    assert listed["keySha256"] == hashlib.sha256(key.encode()).hexdigest() == status["serving"]["apiKeySha256"]
    # the server's own admin key: generated, owned by the ModelServer, read by the engine and the sidecar
    server_status = wait_for(
        "the server's key recorded",
        lambda: (s := _server_status(jobs, namespace, "shared")).get("apiKeySecret") and s,
        timeout=60,
    )
    assert server_status["apiKeySecret"] == "shared-server-api-key"
    admin = jobs.cluster.core.read_namespaced_secret("shared-server-api-key", namespace)
    assert admin.metadata.owner_references[0].kind == "ModelServer"
    assert _key(jobs, namespace, "shared-server-api-key") != key
    deployment = _serving_deployment(jobs, namespace, "shared-server")
    for container in ("server", "adapters"):
        ref = _server_env(deployment, container)["FTO_API_KEY"].value_from.secret_key_ref
        assert ref.name == "shared-server-api-key"
    policy = jobs.cluster.networking.read_namespaced_network_policy("shared-server", namespace)
    (rule,) = policy.spec.ingress
    own, tenants = rule._from
    assert own.pod_selector is not None and own.namespace_selector is None
    (expression,) = tenants.namespace_selector.match_expressions
    assert (expression.key, expression.operator, expression.values) == (
        "kubernetes.io/metadata.name",
        "In",
        ["team-z"],
    )
