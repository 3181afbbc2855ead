"""The chart on a real API server: server-side dry run, install/upgrade/uninstall, and the operator running
with exactly the chart's RBAC (a TokenRequest token of the chart's ServiceAccount) through a whole run.

The local cluster's nodes are kwok fakes that cannot run the operator's container, so the in-cluster pod is
pinned to no node (it stays Pending; it is still admitted under the restricted Pod Security profile) and the
operator runs here as a process whose only credentials are that ServiceAccount's token.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Jobs, Operator, ftj_manifest, success_message
from tests.support.ports import free_port
from tests.support.waiting import wait_for

from .chart import CHART, ROOT, helm, kubectl, release_name, service_account_identity

pytestmark = pytest.mark.cluster

KWOK_PLACEMENT = {
    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"type": "kwok"},
}
NO_NODE = "nodeSelector.finetune\\.dev/test-no-such-node=true"  # keeps the in-cluster operator from running


def _restricted(cluster: Any, namespace: str) -> None:
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": labels}})


@pytest.fixture
def release(cluster: Any, namespace: str, crd: str) -> Iterator[str]:
    """A release name; whatever it installed (cluster-scoped RBAC included) is uninstalled afterwards."""
    name = release_name()
    yield name
    helm("uninstall", name, "--namespace", namespace, "--ignore-not-found", kubeconfig=cluster.kubeconfig)


@pytest.mark.parametrize("mode", ["default", "cluster-wide", "namespaced", "api"])
def test_template_passes_server_side_dry_run(cluster: Any, namespace: str, crd: str, mode: str) -> None:
    """The API server accepts every object (the admission policy's CEL compiles: a bad expression is refused)."""
    _restricted(cluster, namespace)
    values = ["--set", "networkPolicy.enabled=true", "--include-crds"]
    if mode == "namespaced":
        values += ["--set", f"watchNamespaces={{{namespace}}}"]
    if mode == "cluster-wide":
        values += ["--set", "clusterWide=true"]
    if mode == "api":  # OpenAI's fine-tuning API with everything it can render (docs/openai-api.md)
        values += ["--set", "api.enabled=true", "--set", "api.files.bucket=files", "--set", "api.ingress.enabled=true"]
        values += [
            "--set",
            "api.ingress.host=ft.example.com",
            "--set-json",
            'api.models=[{"name":"m","baseModel":"s3://m/"}]',
        ]
    rendered = helm("template", release_name(), str(CHART), "--namespace", namespace, *values).stdout
    result = kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-test",
        "--dry-run=server",
        "-f",
        "-",
        kubeconfig=cluster.kubeconfig,
        stdin=rendered,
    )
    assert "Warning" not in result.stderr, result.stderr  # PodSecurity warn=restricted says nothing
    objects = {line.split(" ")[0] for line in result.stdout.splitlines()}
    kinds = {name.split("/")[0] for name in objects}
    assert {
        "deployment.apps",
        "clusterrole.rbac.authorization.k8s.io",
        "networkpolicy.networking.k8s.io",
        "validatingadmissionpolicy.admissionregistration.k8s.io",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io",
    } <= kinds
    # every mode has the leader election's Role (its one Lease); only cluster-wide has no Role for watching
    roles = {name.split("/", 1)[1] for name in objects if name.startswith("role.rbac.authorization.k8s.io/")}
    assert any(role.endswith("-leader-election") for role in roles), roles
    assert any(not role.endswith("-leader-election") for role in roles) == (mode != "cluster-wide"), roles
    if mode == "api":
        assert {"ingress.networking.k8s.io", "service", "configmap", "serviceaccount"} <= kinds, kinds
        assert sum(name.startswith("deployment.apps/") for name in objects) == 2


def _operator_pods(cluster: Any, namespace: str, release: str) -> list[Any]:
    items: list[Any] = cluster.core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={release}"
    ).items
    return items


def test_install_upgrade_uninstall_keeps_crd_and_jobs(cluster: Any, namespace: str, release: str, jobs: Jobs) -> None:
    _restricted(cluster, namespace)
    kc = cluster.kubeconfig
    helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set-string",
        NO_NODE,
        kubeconfig=kc,
    )
    fullname = f"{release}-finetune-operator"
    deployment = cluster.apps.read_namespaced_deployment(fullname, namespace)
    assert deployment.spec.strategy.type == "RollingUpdate" and deployment.spec.replicas == 2  # leader election
    # the ReplicaSet's pod is admitted by PodSecurity enforce=restricted (it is created at all)
    wait_for("the operator pod", lambda: _operator_pods(cluster, namespace, release), timeout=60)
    jobs.create(namespace, ftj_manifest("survivor"))

    helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        namespace,
        "--reuse-values",
        "--set",
        "logFormat=json",
        "--set",
        "trainer.image=reg.example/trainer:2",
        kubeconfig=kc,
    )
    deployment = cluster.apps.read_namespaced_deployment(fullname, namespace)
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["FTO_LOG_FORMAT"] == "json" and env["FTO_TRAINER_IMAGE"] == "reg.example/trainer:2"
    assert env["FTO_NAMESPACES"] == namespace  # --reuse-values kept it
    history = yaml.safe_load(helm("history", release, "-n", namespace, "-o", "yaml", kubeconfig=kc).stdout)
    assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"

    helm("uninstall", release, "-n", namespace, "--wait", kubeconfig=kc)
    gone = kubectl(
        "get",
        "deployment,serviceaccount,role,rolebinding,service",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/instance={release}",
        "-o",
        "name",
        kubeconfig=kc,
    ).stdout
    assert gone.strip() == ""
    cluster_scoped = kubectl("get", "clusterrole,clusterrolebinding", "-o", "name", kubeconfig=kc).stdout
    assert fullname not in cluster_scoped
    kubectl("get", "crd", "finetunejobs.finetune.dev", kubeconfig=kc)  # helm never deletes crds/
    assert jobs.get(namespace, "survivor")["metadata"]["name"] == "survivor"


def _quickstart(secret: str) -> dict[str, Any]:
    """examples/quickstart.yaml as a user applies it, placed on kwok's fake GPU nodes."""
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    body["spec"]["resources"].update(KWOK_PLACEMENT)
    body["spec"]["storage"]["credentialsSecret"] = secret
    return body


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+|NaN)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def test_operator_with_the_charts_rbac_runs_an_example_to_succeeded(
    cluster: Any,
    namespace: str,
    other_namespace: str,
    release: str,
    jobs: Jobs,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Release in `namespace`, FineTuneJobs in `other_namespace`: the token can do what a whole run needs."""
    from kubernetes import client

    team = other_namespace
    helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        f"watchNamespaces={{{team}}}",
        "--set-string",
        NO_NODE,
        kubeconfig=cluster.kubeconfig,
    )
    identity = service_account_identity(cluster, namespace, f"{release}-finetune-operator", tmp_path)
    cluster.core.create_namespaced_secret(
        team,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="team-s3"),
            string_data={"AWS_ACCESS_KEY_ID": "AKIA-TEAM", "AWS_SECRET_ACCESS_KEY": "team-secret-value"},
        ),
    )
    port = free_port()
    operator = Operator(
        identity.kubeconfig,
        [team],
        tmp_path / "operator.log",
        ["--metrics-port", str(port), "--backoff-limit", "2"],
    ).start()
    try:
        quickstart = _quickstart("team-s3")
        jobs.create(team, quickstart)
        pod = jobs.running_pod(team, "quickstart-r1", timeout=90)
        # test metrics the example's gate passes (its rules are all on the test split: a loss or answer scores)
        passing = {
            rule["metric"].removeprefix("test_"): rule["max"] / 2 if "max" in rule else (1 + rule["min"]) / 2
            for rule in quickstart["spec"]["evaluation"]["gate"]
        }
        jobs.finish_pod(team, pod.metadata.name, 0, success_message(passing.pop("loss", 1.4), **passing))
        serving = jobs.wait_phase(team, "quickstart", "Serving", timeout=90)
        assert serving["endpoint"]["url"] == f"http://quickstart.{team}.svc:8000/v1"
        jobs.patch_spec(team, "quickstart", {"serving": {"enabled": False}})  # deletes the serving bundle
        done = jobs.wait_phase(team, "quickstart", "Succeeded", timeout=60)
        assert done["observedGeneration"] == jobs.get(team, "quickstart")["metadata"]["generation"]
        wait_for(
            "the serving Deployment removed",
            lambda: (
                not cluster.apps.list_namespaced_deployment(team, label_selector="finetune.dev/component=serving").items
            ),
        )

        samples = wait_for(
            "metrics that saw the run",
            lambda: s if (s := _scrape(port)).get('finetune_operator_finetunejobs{phase="Succeeded"}') == 1 else None,
        )
        assert samples['finetune_operator_finetunejobs{phase="Training"}'] == 0
        assert samples["finetune_operator_reconcile_seconds_count"] >= 3
        assert samples['finetune_operator_child_create_seconds_count{kind="Job"}'] == 1
        assert samples['finetune_operator_child_create_seconds_count{kind="Deployment"}'] >= 1
        assert samples.get('finetune_operator_reconcile_errors_total{kind="unexpected"}', 0) == 0
        log = operator.log_path.read_text(errors="replace")
        for refusal in ("403", "Forbidden", "forbidden", "Not enough permissions"):
            assert refusal not in log, operator.log_tail()
    finally:
        operator.stop()
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"--- operator log ---\n{operator.log_tail()}")
