"""The chart's RBAC pinned rule by rule, without a cluster (`helm template`): least privilege by default.

What must hold (issue #24, attack 4): the default install reconciles only the namespaces it is given (the release
namespace when none are); cluster-wide mode is an explicit opt-in; no ClusterRole ever reads Secrets; every rule says
why; the Roles the operator creates for its workloads fit the admission policy and are covered by the operator's
own rules (RBAC's escalation check). tests/integration/test_tenancy.py checks the same on a real API server.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .chart import CHART, helm, render, set_args

Rule = tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # apiGroup, resources, verbs, resourceNames

# The operator's rules in each namespace it reconciles, in the chart's order (templates/_helpers.tpl says why each).
NAMESPACED: list[Rule] = [
    ("finetune.dev", ("finetunejobs",), ("list", "watch"), ()),
    ("finetune.dev", ("finetunejobs/status",), ("patch",), ()),
    ("finetune.dev", ("finetunejobs/finalizers",), ("update",), ()),
    ("finetune.dev", ("finetunesweeps",), ("list", "watch"), ()),
    ("finetune.dev", ("finetunesweeps/status",), ("patch",), ()),
    ("finetune.dev", ("finetunesweeps/finalizers",), ("update",), ()),
    ("finetune.dev", ("finetunejobs",), ("get", "create", "patch"), ()),
    ("finetune.dev", ("modelservers",), ("list", "watch"), ()),
    ("finetune.dev", ("modelservers/status",), ("patch",), ()),
    ("finetune.dev", ("modelservers/finalizers",), ("update",), ()),
    ("", ("configmaps",), ("get", "list", "watch"), ()),
    ("batch", ("jobs",), ("get", "list", "watch", "create", "patch", "delete"), ()),
    ("", ("pods",), ("get", "list", "watch", "create", "delete"), ()),
    ("apps", ("deployments",), ("get", "list", "watch", "create", "patch", "delete"), ()),
    ("", ("configmaps", "services"), ("create", "patch", "delete"), ()),
    ("", ("services",), ("get",), ()),
    ("policy", ("poddisruptionbudgets",), ("get", "create", "patch", "delete"), ()),
    ("apps", ("replicasets",), ("list", "watch"), ()),
    ("", ("serviceaccounts",), ("get", "create"), ()),
    ("rbac.authorization.k8s.io", ("roles", "rolebindings"), ("get", "create"), ()),
    ("rbac.authorization.k8s.io", ("roles",), ("update",), ()),
    ("networking.k8s.io", ("networkpolicies",), ("get", "create", "patch", "delete"), ()),
    ("", ("secrets",), ("create",), ()),
    ("", ("secrets",), ("get",), ()),
    ("", ("events",), ("create",), ()),
]
SECRET_RULE: Rule = ("", ("secrets",), ("get",), ())
CRDS: Rule = ("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"), ())
NAMESPACES: Rule = ("", ("namespaces",), ("list", "watch"), ())
LEASE = [
    ("coordination.k8s.io", ("leases",), ("create",), ()),
    ("coordination.k8s.io", ("leases",), ("get", "update"), ("r-finetune-operator",)),
]
CLUSTER_WIDE = {"clusterWide": "true"}


def _rules(doc: dict[str, Any]) -> list[Rule]:
    out: list[Rule] = []
    for rule in doc["rules"]:
        (group,) = rule["apiGroups"]  # one group a rule: the tables above stay readable
        names = tuple(rule.get("resourceNames", ()))
        out.append((group, tuple(rule["resources"]), tuple(rule["verbs"]), names))
    return out


def _by_kind_and_place(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[Rule]]:
    return {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): _rules(d)
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }


def test_default_install_is_one_role_in_the_release_namespace_and_two_cluster_reads() -> None:
    docs = render("r", "ops")
    assert _by_kind_and_place(docs) == {
        ("ClusterRole", "", "r-finetune-operator"): [CRDS, NAMESPACES],
        ("Role", "ops", "r-finetune-operator"): NAMESPACED,
        ("Role", "ops", "r-finetune-operator-leader-election"): LEASE,
    }
    bindings = [(d["kind"], d["metadata"].get("namespace", "")) for d in docs if d["kind"].endswith("RoleBinding")]
    assert sorted(bindings) == [("ClusterRoleBinding", ""), ("RoleBinding", "ops"), ("RoleBinding", "ops")]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FTO_NAMESPACES"] == "ops" and env["FTO_SECRET_CHECK"] == "true"


def test_listed_namespaces_get_the_same_role_and_the_release_namespace_only_its_lease() -> None:
    places = _by_kind_and_place(render("r", "ops", {"watchNamespaces": "{team-a,team-b}"}))
    assert places == {
        ("ClusterRole", "", "r-finetune-operator"): [CRDS, NAMESPACES],
        ("Role", "team-a", "r-finetune-operator"): NAMESPACED,
        ("Role", "team-b", "r-finetune-operator"): NAMESPACED,
        ("Role", "ops", "r-finetune-operator-leader-election"): LEASE,
    }


def test_cluster_wide_is_an_opt_in_without_any_secret_read() -> None:
    docs = render("r", "ops", CLUSTER_WIDE)
    assert _by_kind_and_place(docs) == {
        ("ClusterRole", "", "r-finetune-operator"): [CRDS, *(r for r in NAMESPACED if r != SECRET_RULE)],
        ("Role", "ops", "r-finetune-operator-leader-election"): LEASE,
    }
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FTO_NAMESPACES"] == "" and env["FTO_SECRET_CHECK"] == "false"  # no Secret read: no Secret check
    both = helm("template", "r", str(CHART), *set_args({**CLUSTER_WIDE, "watchNamespaces": "{a}"}), check=False)
    assert both.returncode != 0 and "leave watchNamespaces empty" in both.stderr


@pytest.mark.parametrize("values", [{}, CLUSTER_WIDE], ids=["default", "cluster-wide"])
def test_no_cluster_wide_secret_read_and_role_creation_only_under_the_admission_policy(values: dict[str, str]) -> None:
    docs = render("r", "ops", values)
    for cluster_role in (d for d in docs if d["kind"] == "ClusterRole"):
        # no read of any kind; `create` only, for the generated API keys (never update, patch or delete)
        assert [r for r in _rules(cluster_role) if "secrets" in r[1]] in ([], [("", ("secrets",), ("create",), ())])
    creating = [
        d["kind"]
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        for r in _rules(d)
        if {"roles", "rolebindings"} & set(r[1]) and "create" in r[2]
    ]
    assert creating == ["ClusterRole" if values else "Role"]
    for d in docs:
        for rule in d.get("rules") or []:
            assert not {"escalate", "bind", "impersonate", "*"} & set(rule["verbs"]), rule
    (policy,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == 'request.userInfo.username == "system:serviceaccount:ops:r-finetune-operator"'
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_every_rule_says_why() -> None:
    """Each rule of every Role and ClusterRole the chart renders follows a comment line of its own."""
    for values in ({}, CLUSTER_WIDE):
        lines = helm("template", "r", str(CHART), "--namespace", "ops", *set_args(values)).stdout.splitlines()
        rules = [i for i, line in enumerate(lines) if re.match(r"^- apiGroups:", line)]
        assert len(rules) >= len(NAMESPACED)
        undocumented = [lines[i + 1] for i in rules if not lines[i - 1].lstrip().startswith("#")]
        assert not undocumented, undocumented


def _workload_roles() -> list[dict[str, Any]]:
    """The Roles the operator creates: a run's trainer (builders/rbac.py) and a ModelServer's sidecar."""
    from finetune_operator.api.objects import Owner
    from finetune_operator.builders.modelserver import ServerOwner, sync_rbac
    from finetune_operator.builders.rbac import trainer_rbac

    made = [*trainer_rbac(Owner("team-a", "bot", "uid-1")), *sync_rbac(ServerOwner("team-a", "shared", "uid-2"))]
    return [m for m in made if m["kind"] in ("Role", "RoleBinding")]


def test_the_workload_roles_fit_the_admission_policy_and_the_operators_own_rules() -> None:
    """RBAC lets the operator create a Role only with rules it holds; the admission policy admits only named
    get/patch rules off Secrets, and bindings of a Role to the ServiceAccount of its own name. A change to
    TRAINER_RULES (builders/rbac.py) or sync_rbac that breaks either fails here."""
    held = {(g, res, v) for g, resources, verbs, _ in NAMESPACED for res in resources for v in verbs}
    for manifest in _workload_roles():
        name = manifest["metadata"]["name"]
        assert manifest["metadata"]["ownerReferences"][0]["apiVersion"].startswith("finetune.dev/")
        if manifest["kind"] == "RoleBinding":
            assert manifest["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
            assert manifest["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "team-a"}]
            continue
        for rule in manifest["rules"]:
            assert rule["resourceNames"] and set(rule["verbs"]) <= {"get", "patch"}, rule
            assert "secrets" not in rule["resources"] and "nonResourceURLs" not in rule
            needed = {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
            assert needed <= held, (name, needed - held)


def _policy() -> dict[str, Any]:
    (policy,) = [d for d in render("r", "ops") if d["kind"] == "ValidatingAdmissionPolicy"]
    return policy


def test_the_admission_policy_bounds_the_pods_the_operator_creates_and_deletes() -> None:
    """RBAC's create and delete on pods (the data check's bare pod) reach every pod of a watched namespace: the
    policy sees the operator's pod CREATE and DELETE (no UPDATE: the operator holds none) and checks each part of
    the data check's shape. What the checks admit and refuse is proven on a real API server
    (tests/integration/test_tenancy.py::test_admission_policy_lets_the_operator_create_and_delete_only_data_check_pods)."""
    spec = _policy()["spec"]
    (pods,) = [r for r in spec["matchConstraints"]["resourceRules"] if "pods" in r["resources"]]
    assert pods["apiGroups"] == [""] and pods["resources"] == ["pods"]  # not pods/* (eviction, exec, ...)
    assert pods["operations"] == ["CREATE", "DELETE"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert variables["subject"] == "request.operation == 'DELETE' ? oldObject : object"  # DELETE has no object
    checks = {v["message"]: " ".join(v["expression"].split()) for v in spec["validations"]}
    owned = "the operator creates Roles, RoleBindings, Secrets and Pods, and deletes Pods, only with a finetune.dev"
    (owner,) = [e for m, e in checks.items() if m.startswith(owned)]
    assert "variables.subject.metadata.ownerReferences" in owner and "o.controller" in owner
    pod_checks = " ".join(e for e in checks.values() if "variables.creatingPod" in e or "'Pod'" in e)
    for needed in (
        "labels['finetune.dev/component'] == 'validator'",
        "o.kind == 'FineTuneJob'",
        "object.spec.automountServiceAccountToken == false",
        "object.spec.volumes.all(v, has(v.configMap) || has(v.emptyDir))",  # no hostPath, projected token, Secret
        "object.spec.securityContext.runAsNonRoot == true",
        "has(object.spec.hostNetwork) && object.spec.hostNetwork",
        "has(object.spec.hostPID) && object.spec.hostPID",
        "has(object.spec.hostIPC) && object.spec.hostIPC",
        "object.spec.containers.all(c,",
        "object.spec.initContainers.all(c,",
        "c.securityContext.allowPrivilegeEscalation == false",
        "c.securityContext.privileged == false",
        "size(c.securityContext.capabilities.add) == 0",
    ):
        assert needed in pod_checks, needed


def test_the_data_check_pod_fits_the_admission_policy() -> None:
    """The data check's pod spec as the builders make it (the check's Job and its bare pod share it) has the shape
    the policy admits; a change to builders/common.py's security contexts or the check's volumes that the policy
    would refuse fails here before any cluster."""
    from finetune_operator.api.finetunejob import parse_spec
    from finetune_operator.api.labels import COMPONENT_VALIDATOR, LABEL_COMPONENT
    from finetune_operator.api.objects import Owner
    from finetune_operator.builders.training import validation_job
    from finetune_operator.core.settings import Settings

    spec = parse_spec(
        {
            "baseModel": {"uri": "s3://models/tiny/"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "chat"},
            "output": {"uri": "s3://artifacts/x/"},
            "storage": {"credentialsSecret": "s3-creds"},
        }
    )
    job = validation_job(spec, Owner("team-a", "bot", "uid-1"), 1, "hash", Settings())
    (reference,) = job["metadata"]["ownerReferences"]
    assert reference["apiVersion"].startswith("finetune.dev/") and reference["kind"] == "FineTuneJob"
    assert reference["controller"] is True
    template = job["spec"]["template"]
    assert template["metadata"]["labels"][LABEL_COMPONENT] == COMPONENT_VALIDATOR
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert all(set(volume) - {"name"} <= {"configMap", "emptyDir"} for volume in pod["volumes"]), pod["volumes"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context.get("privileged", False) is False
        assert context.get("runAsNonRoot", True) is True and not context.get("capabilities", {}).get("add")


def test_images_may_be_pinned_by_digest_and_a_malformed_digest_is_refused() -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    pinned = {
        "trainer.image": f"reg.example/trainer@{digest}",
        "serving.image": f"reg.example/server:1@{digest}",
        "serving.vllmImage": f"vllm/vllm-openai:v0.32.0@{digest}",
    }
    (deployment,) = [d for d in render("r", "ops", pinned) if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["FTO_TRAINER_IMAGE"], env["FTO_SERVING_IMAGE"], env["FTO_VLLM_IMAGE"]) == tuple(pinned.values())
    for key in pinned:
        bad = helm("template", "r", str(CHART), *set_args({key: "reg.example/x@sha256:abc"}), check=False)
        assert bad.returncode != 0 and "schema" in bad.stderr.lower(), (key, bad.stderr)


def test_policy_values_reach_the_operator_as_it_reads_them() -> None:
    from finetune_operator.core.settings import AllowedToleration, parse_args

    def settings_of(values: dict[str, str]) -> Any:
        (deployment,) = [d for d in render("r", "ops", values) if d["kind"] == "Deployment"]
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return parse_args([], env={k: v for k, v in env.items() if v is not None})

    default = settings_of({})
    assert default.allow_node_identity is False
    assert default.allowed_priority_classes == () and default.allowed_tolerations == ()
    opened = settings_of(
        {
            "policy.allowNodeIdentity": "true",
            "policy.allowedPriorityClasses": "{batch-low,batch-high}",
            "policy.allowedTolerations[0].key": "nvidia.com/gpu",
            "policy.allowedTolerations[0].operator": "Exists",
            "policy.allowedTolerations[1].key": "pool",
        }
    )
    assert opened.allow_node_identity and opened.allowed_priority_classes == ("batch-low", "batch-high")
    assert opened.allowed_tolerations == (
        AllowedToleration(key="nvidia.com/gpu", operator="Exists"),
        AllowedToleration(key="pool"),
    )
    typo = helm("template", "r", str(CHART), *set_args({"policy.allowedTolerations[0].kee": "x"}), check=False)
    assert typo.returncode != 0 and "schema" in typo.stderr.lower()
