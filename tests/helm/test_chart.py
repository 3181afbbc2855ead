"""The chart without a cluster: lint, the CRD copy, what the templates render, what the schema refuses."""

from __future__ import annotations

from typing import Any

import pytest

from .chart import CHART, ROOT, helm, render, set_args

NAMESPACED = {"watchNamespaces": "{team-a,team-b}"}
CLUSTER_WIDE = {"clusterWide": "true"}
EVERYTHING = {
    **NAMESPACED,
    "networkPolicy.enabled": "true",
    "networkPolicy.apiServer.cidrs": "{10.0.0.1/32}",
    "networkPolicy.metricsNamespaceSelector.matchLabels.team": "monitoring",
    "metrics.serviceMonitor.enabled": "true",
    "metrics.prometheusRule.enabled": "true",
}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _watching(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The Roles or RoleBindings of the watched namespaces, not leader election's own in the release namespace."""
    return [d for d in _of(docs, kind) if not d["metadata"]["name"].endswith("-leader-election")]


def test_chart_crd_is_the_repository_crd() -> None:
    """One source of truth: fix a difference with helm/sync-crd.sh."""
    sources = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    for name in sources:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), name
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sources


def test_without_leader_election_one_replica_recreate_and_no_lease_rights() -> None:
    rendered = render("r", "ops", {"leaderElection.enabled": "false", "replicas": "3"})
    (deployment,) = _of(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [r for r in _of(rendered, "Role") if r["metadata"]["name"].endswith("-leader-election")]


def test_leader_election_may_touch_only_its_lease() -> None:
    roles = _of(render("r", "ops"), "Role")
    (role,) = [r for r in roles if r["metadata"]["name"] == "r-finetune-operator-leader-election"]
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["r-finetune-operator"],
            "verbs": ["get", "update"],
        },
    ]


@pytest.mark.parametrize("values", [{}, EVERYTHING], ids=["defaults", "everything-on"])
def test_helm_lint(values: dict[str, str]) -> None:
    out = helm("lint", str(CHART), "--strict", *set_args(values)).stdout
    assert "0 chart(s) failed" in out


def test_two_replicas_with_leader_election_rolling_restricted_pod() -> None:
    (deployment,) = _of(render("r", "ops"), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["FTO_LEADER_ELECTION"] == "true" and env["FTO_LEADER_ELECTION_NAMESPACE"] == "ops"
    assert env["FTO_LEADER_ELECTION_LEASE"] == "r-finetune-operator"
    pod = spec["template"]["spec"]
    assert pod["securityContext"].items() >= RESTRICTED_POD.items()
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "ghcr.io/finetune-operator/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FTO_NAMESPACES"] == "ops" and env["FTO_METRICS_PORT"] == "9090" and env["FTO_LOG_FORMAT"] == "text"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_values_reach_the_operator_flags() -> None:
    docs = render(
        "r",
        "ops",
        {
            **NAMESPACED,
            "trainer.image": "reg.example/trainer:9",
            "trainer.terminationGracePeriodSeconds": "600",
            "serving.image": "reg.example/server:9",
            "logFormat": "json",
            "metrics.enabled": "false",
            "image.digest": "sha256:" + "a" * 64,
            "nodeSelector.pool": "system",
        },
    )
    (deployment,) = _of(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FTO_NAMESPACES"] == "team-a,team-b" and env["FTO_TRAINER_IMAGE"] == "reg.example/trainer:9"
    assert env["FTO_SERVING_IMAGE"] == "reg.example/server:9" and env["FTO_LOG_FORMAT"] == "json"
    assert env["FTO_METRICS_PORT"] == "0" and not _of(docs, "Service")
    assert env["FTO_TRAINER_GRACE_SECONDS"] == "600" and env["FTO_GPU_MEMORY"] == ""
    assert pod["containers"][0]["image"].endswith("@sha256:" + "a" * 64)
    assert pod["nodeSelector"] == {"pool": "system"}


def test_gpu_table_rows_reach_the_operator_and_bad_ones_are_refused() -> None:
    rows = {"validation.gpuMemory.H100-80G": "76Gi", r"validation.gpuMemory.NVIDIA-A100-SXM4-40GB-MIG-3g\.20gb": "19Gi"}
    (deployment,) = _of(render("r", "ops", rows), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FTO_GPU_MEMORY"] == "H100-80G=76Gi,NVIDIA-A100-SXM4-40GB-MIG-3g.20gb=19Gi"
    from finetune_operator.core.settings import parse_args

    assert parse_args([], env={"FTO_GPU_MEMORY": env["FTO_GPU_MEMORY"]}).gpu_memory == tuple(
        env["FTO_GPU_MEMORY"].split(",")
    )  # what the chart writes, the operator reads
    result = helm("template", "r", str(CHART), *set_args({"validation.gpuMemory.H100-80G": "lots"}), check=False)
    assert result.returncode != 0 and "schema" in result.stderr.lower(), result.stderr


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = doc["rules"]
    return rules


@pytest.mark.parametrize("values", [{}, NAMESPACED, CLUSTER_WIDE], ids=["default", "namespaced", "cluster-wide"])
def test_rbac_has_no_wildcards_and_no_pod_or_secret_listing(values: dict[str, str]) -> None:
    docs = render("r", "ops", values)
    roles = _of(docs, "ClusterRole") + _of(docs, "Role")
    assert roles
    for role in roles:
        for rule in _rules(role):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            if "secrets" in rule["resources"]:
                # existence check (get, metadata) or a generated key (create): no list, watch or update
                assert rule["verbs"] in (["get"], ["create"])
            if "pods" in rule["resources"]:
                # the data check's bare pod (create, delete; get after a 409) and observing the rest; the Job
                # controller makes the training pods. Never exec, logs, attach, patch or update
                assert set(rule["verbs"]) == {"get", "list", "watch", "create", "delete"}
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_namespaced_mode_grants_namespaced_rights_only_in_the_listed_namespaces() -> None:
    docs = render("r", "ops", NAMESPACED)
    assert sorted(r["metadata"]["namespace"] for r in _watching(docs, "Role")) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in _watching(docs, "RoleBinding")) == ["team-a", "team-b"]
    (cluster_role,) = _of(docs, "ClusterRole")
    cluster_resources = {res for rule in _rules(cluster_role) for res in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    assert all(set(rule["verbs"]) == {"list", "watch"} for rule in _rules(cluster_role))


def test_optional_objects() -> None:
    assert not _of(render("r", "ops"), "NetworkPolicy") and not _of(render("r", "ops"), "ServiceMonitor")
    docs = render("r", "ops", EVERYTHING)
    (policy,) = _of(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    api_rule = policy["spec"]["egress"][1]
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    (monitor,) = _of(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert not _of(render("r", "ops"), "PrometheusRule")
    (rule,) = _of(docs, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "ops"  # its alerts are tested in test_alerts.py


@pytest.mark.parametrize(
    "bad",
    [
        {"logFormat": "yaml"},
        {"watchNamespaces": "{Not_A_Namespace}"},
        {"reconcile.threads": "0"},
        {"metrics.port": "70000"},
        {"trainerImage": "typo.example/x:1"},  # unknown key: additionalProperties false
        {"metrics.prometheusRule.temporaryErrorRatio": "2"},
    ],
    ids=["log-format", "namespace-name", "reconcile-threads", "port", "unknown-key", "alert-ratio"],
)
def test_schema_refuses_bad_values(bad: dict[str, str]) -> None:
    result = helm("template", "r", str(CHART), *set_args(bad), check=False)
    assert result.returncode != 0 and "schema" in result.stderr.lower(), result.stderr


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in _rules(role)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _server_objects(settings: Any) -> list[dict[str, Any]]:
    from finetune_operator.api.modelserver import parse_server_spec
    from finetune_operator.builders.modelserver import (
        ServerOwner,
        adapters_config_map,
        loaded_config_map,
        server_bundle,
    )

    owner = ServerOwner("team-a", "shared", "uid-2")
    spec = parse_server_spec({"baseModelUri": "s3://models/tiny/", "replicas": 2})
    return [*server_bundle(spec, owner, settings), adapters_config_map(owner, []), loaded_config_map(owner)]


def test_the_operator_may_read_and_report_model_servers() -> None:
    for values in ({}, NAMESPACED, CLUSTER_WIDE):
        docs = render("r", "ops", values)
        role = (_watching(docs, "Role") or _of(docs, "ClusterRole"))[0]
        assert {
            ("finetune.dev", "modelservers", "list"),
            ("finetune.dev", "modelservers", "watch"),
            ("finetune.dev", "modelservers/status", "patch"),
            ("", "configmaps", "get"),
            ("", "configmaps", "list"),
            ("", "configmaps", "watch"),
            ("", "pods", "list"),
            ("", "pods", "watch"),
            ("apps", "deployments", "watch"),
            ("apps", "replicasets", "list"),  # a replica: a pod of a ReplicaSet its own Deployment controls
            ("apps", "replicasets", "watch"),
        } <= _granted(role)


def test_rbac_covers_every_child_the_builders_make() -> None:
    """A new kind of child in the operator's builders fails here until the chart grants it."""
    from finetune_operator.api.finetunejob import parse_spec
    from finetune_operator.api.objects import Owner
    from finetune_operator.builders.serving import Published, serving_bundle
    from finetune_operator.core.kube import PLURALS
    from finetune_operator.core.settings import Settings
    from finetune_operator.finetunejob.runs import training_children

    spec = parse_spec(
        {
            "baseModel": {"uri": "s3://models/tiny/"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "chat"},
            "output": {"uri": "s3://artifacts/x/"},
            "storage": {"credentialsSecret": "s3-creds"},
            "distributed": {"workers": 2},
            "serving": {"enabled": True, "replicas": 2},
        }
    )
    owner, settings = Owner("team-a", "bot", "uid-1"), Settings()
    published = Published(1, "causal-lm", "s3://models/tiny/", "s3://artifacts/x/run-1/model/", True)
    created = training_children(spec, owner, 1, "hash", settings)  # POST: create
    applied = serving_bundle(spec, owner, published, settings)  # server-side apply: patch (create if absent)
    applied += _server_objects(settings)  # a ModelServer's (builders/modelserver.py): the same verbs
    needed: set[tuple[str, str, str]] = set()
    # get: core/kube.py reads who controls a child before applying over it or deleting it, and after a create that
    # found the name taken (ownership, issue #24)
    for manifest, verbs in [
        *((m, ("get", "create", "delete")) for m in created),
        *((m, ("get", "create", "patch", "delete")) for m in applied),
    ]:
        api_version = manifest["apiVersion"]
        group = api_version.split("/")[0] if "/" in api_version else ""
        if manifest["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            verbs = ("get", "create")  # removed by garbage collection with their owner, never by the operator
        needed |= {(group, PLURALS[manifest["kind"]], verb) for verb in verbs}
    assert {k for _, k, _ in needed} >= {
        "jobs",
        "configmaps",
        "services",
        "deployments",
        "poddisruptionbudgets",
    }
    for values in ({}, NAMESPACED, CLUSTER_WIDE):
        docs = render("r", "ops", values)
        role = (_watching(docs, "Role") or _of(docs, "ClusterRole"))[0]
        assert needed <= _granted(role), needed - _granted(role)
