"""Shared serving on a real API server: a ModelServer's objects, FineTuneJobs naming it (no Deployment of their
own, their adapters in the server's desired list, a newer run replacing the older, deletion removing it) and
every refusal. kwok plays the pods: training pods finish with metrics (their podMetadata annotations), server
pods turn Ready; the server's sidecar is played by patching its report ConfigMap as the sidecar does
(`finetune_trainer adapters`, tested against the real engines in tests/serve and tests/e2e)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.kwok import KWOK_NODE_SELECTOR, KWOK_TOLERATION

from .conftest import GROUP, VERSION, Jobs, Operator, ftj_manifest, kwok_annotations, success_message, wait_for

pytestmark = pytest.mark.cluster

BASE = "s3://models/tiny/"


def _server(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "baseModelUri": BASE,
        "replicas": 2,
        "maxAdapters": 2,
        "nodeSelector": KWOK_NODE_SELECTOR,
        "tolerations": [KWOK_TOLERATION],
        **spec,
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServer", "metadata": {"name": name}, "spec": body}


def _job(name: str, server: str, loss: float = 1.0, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob naming `server` whose training pod ends by itself with test_loss `loss`."""
    annotations = kwok_annotations(0, success_message(loss), delay="200ms")
    return ftj_manifest(
        name,
        serving={"enabled": True, "server": server},
        podMetadata={"annotations": annotations},
        **spec,
    )


def _create_server(jobs: Jobs, namespace: str, body: dict[str, Any]) -> None:
    jobs.cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", body)


def _server_status(jobs: Jobs, namespace: str, name: str) -> dict[str, Any]:
    body = jobs.cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", name)
    status: dict[str, Any] = body.get("status") or {}
    return status


def _desired(jobs: Jobs, namespace: str, server: str) -> dict[str, int] | None:
    """The server's desired list, name -> run (None until the operator has written it)."""
    from kubernetes import client

    try:
        config = jobs.cluster.core.read_namespaced_config_map(f"{server}-server-adapters", namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return {a["name"]: a["run"] for a in json.loads(config.data["adapters.json"])["adapters"]}


def _play_sidecars(jobs: Jobs, namespace: str, server: str) -> None:
    """Every server pod reports the desired list loaded (what each replica's sidecar writes once converged)."""
    config = jobs.cluster.core.read_namespaced_config_map(f"{server}-server-adapters", namespace)
    adapters = json.loads(config.data["adapters.json"])["adapters"]
    report = json.dumps({"adapters": [{"name": a["name"], "run": a["run"], "uri": a["uri"]} for a in adapters]})
    pods = jobs.cluster.core.list_namespaced_pod(namespace, label_selector="finetune.dev/component=model-server")
    data = {p.metadata.name: report for p in pods.items if not p.metadata.deletion_timestamp}
    jobs.cluster.core.patch_namespaced_config_map(f"{server}-server-loaded", namespace, {"data": data})


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == "Ready")


def _until(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    return wait_for(what, check, timeout=timeout)


def test_a_model_server_serves_jobs_adapters_and_swaps_and_drops_them(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    _create_server(jobs, namespace, _server("shared"))
    status = _until(
        "server replicas ready",
        lambda: (s := _server_status(jobs, namespace, "shared")).get("readyReplicas") == 2 and s,
    )
    assert status["endpoint"] == f"http://shared-server.{namespace}.svc:8000/v1"
    assert status["capacityLeft"] == 2 and status["adapters"] == []
    (deployment,) = jobs.cluster.apps.list_namespaced_deployment(
        namespace, label_selector="finetune.dev/component=model-server"
    ).items
    pod = deployment.spec.template.spec
    assert [c.name for c in pod.containers] == ["server", "adapters"]
    assert pod.automount_service_account_token is False and pod.service_account_name == "shared-server-sync"
    assert jobs.cluster.core.read_namespaced_service("shared-server", namespace).spec.ports[0].port == 8000
    from kubernetes import client

    client.PolicyV1Api(jobs.cluster.api_client).read_namespaced_pod_disruption_budget("shared-server", namespace)
    role = jobs.cluster.rbac.read_namespaced_role("shared-server-sync", namespace)
    assert sorted(n for r in role.rules for n in r.resource_names) == ["shared-server-adapters", "shared-server-loaded"]

    jobs.create(namespace, _job("alpha", "shared"))
    jobs.create(namespace, _job("beta", "shared"))
    _until("both adapters desired", lambda: _desired(jobs, namespace, "shared") == {"alpha": 1, "beta": 1})
    loading = jobs.status(namespace, "alpha")
    assert loading["phase"] == "Publishing" and _ready(loading)["reason"] in ("Loading", "Waiting")
    _play_sidecars(jobs, namespace, "shared")
    served = jobs.wait_phase(namespace, "alpha", "Serving", timeout=60)
    assert served["endpoint"] == {
        "url": f"http://shared-server.{namespace}.svc:8000/v1",
        "model": "alpha",
        "run": 1,
        "server": f"{namespace}/shared",
    }
    for name in ("alpha", "beta"):  # no Deployment of their own
        uid = jobs.get(namespace, name)["metadata"]["uid"]
        assert not jobs.cluster.apps.list_namespaced_deployment(
            namespace, label_selector=f"finetune.dev/job-uid={uid}"
        ).items
    converged = _until(
        "server converged",
        lambda: (
            (s := _server_status(jobs, namespace, "shared"))["capacityLeft"] == 0
            and all(sorted(r["adapters"]) == ["alpha@1", "beta@1"] for r in s["loaded"])
            and s
        ),
    )
    assert len(converged["loaded"]) == 2

    # a newer passing run replaces the adapter in the desired list; the endpoint keeps run 1 until loaded
    jobs.patch_spec(namespace, "alpha", {"hyperparameters": {"learningRate": 1e-4}})
    _until("run 2 desired", lambda: (_desired(jobs, namespace, "shared") or {}).get("alpha") == 2)
    assert jobs.status(namespace, "alpha")["endpoint"]["run"] == 1
    _play_sidecars(jobs, namespace, "shared")
    _until("run 2 served", lambda: (jobs.status(namespace, "alpha").get("endpoint") or {}).get("run") == 2)

    # disabling serving removes one adapter, deleting the FineTuneJob the other
    jobs.patch_spec(namespace, "beta", {"serving": {"enabled": False}})
    _until("beta removed", lambda: _desired(jobs, namespace, "shared") == {"alpha": 2})
    jobs.cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "alpha")
    _until("alpha removed", lambda: _desired(jobs, namespace, "shared") == {})
    assert _server_status(jobs, namespace, "shared")["capacityLeft"] == 2


def test_refusals_say_why_on_the_fine_tune_job(
    operator_factory: Callable[..., Operator], jobs: Jobs, namespace: str, other_namespace: str
) -> None:
    operator_factory(namespace, other_namespace)
    _create_server(jobs, namespace, _server("shared", replicas=1, maxAdapters=1, maxLoraRank=16))
    jobs.create(namespace, _job("first", "shared"))
    _until("first desired", lambda: _desired(jobs, namespace, "shared") == {"first": 1})
    jobs.create(namespace, _job("late", "shared"))
    jobs.create(namespace, _job("wide", "shared", method={"type": "lora", "lora": {"rank": 64}}))
    jobs.create(namespace, _job("full", "shared", method={"type": "full"}))
    jobs.create(namespace, _job("llama", "shared", baseModel={"uri": "s3://models/llama/"}))
    jobs.create(other_namespace, _job("guest", f"{namespace}/shared"))
    jobs.create(namespace, _job("nowhere", "missing"))
    expected = {
        (namespace, "late"): "ServerFull",
        (namespace, "wide"): "RankTooHigh",
        (namespace, "full"): "NotAnAdapter",
        (namespace, "llama"): "BaseModelMismatch",
        (other_namespace, "guest"): "NamespaceNotAllowed",
        (namespace, "nowhere"): "ServerNotFound",
    }

    def reasons() -> dict[tuple[str, str], str]:
        found = {}
        for ns, name in expected:
            conditions = jobs.status(ns, name).get("conditions") or []
            found[(ns, name)] = next((c["reason"] for c in conditions if c["type"] == "Ready"), "")
        return found

    _until("every refusal", lambda: reasons() == expected, timeout=120)
    full = _ready(jobs.status(namespace, "full"))
    assert full["status"] == "False" and "s3://artifacts/full/run-1/model/" in full["message"]  # stays in S3
    assert _desired(jobs, namespace, "shared") == {"first": 1}
    refused = {r["finetuneJob"]: r["reason"] for r in _server_status(jobs, namespace, "shared")["refused"]}
    assert refused[f"{other_namespace}/guest"] == "NamespaceNotAllowed"

    # the server lists the namespace: the guest is admitted (under NAMESPACE/NAME) once a place is free
    jobs.cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelservers", "shared", {"spec": {"allowedNamespaces": [other_namespace]}}
    )
    jobs.cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "first")
    _until(
        "guest or late admitted",
        lambda: set(_desired(jobs, namespace, "shared") or {}) in ({f"{other_namespace}/guest"}, {"late"}),
    )


def test_the_example_model_server_is_accepted(cluster: Any, crd: str, namespace: str) -> None:
    import yaml

    from .conftest import ROOT

    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / "modelserver.yaml").read_text()) if d]
    server = next(d for d in docs if d["kind"] == "ModelServer")
    created = cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelservers", server, field_validation="Strict"
    )
    assert created["spec"]["maxAdapters"] == 8 and created["spec"]["engine"] == "transformers"
    bad = {**server, "metadata": {"name": "bad"}, "spec": {**server["spec"], "engine": "tgi", "maxAdapters": 0}}
    from kubernetes import client

    with pytest.raises(client.ApiException) as refused:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", bad)
    assert "spec.engine" in str(refused.value.body) and "spec.maxAdapters" in str(refused.value.body)
