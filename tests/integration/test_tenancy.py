"""Tenancy with real RBAC: what the chart's ServiceAccount and the per-run trainer ServiceAccount may do.

Every check is a request judged by the API server's RBAC (a TokenRequest token of the ServiceAccount, or a
SelfSubjectRulesReview made with it), not a reading of YAML. The operator runs on the chart's token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helm.chart import CHART, Identity, helm, release_name, service_account_identity, status_of

from .conftest import GROUP, PLURAL, VERSION, Jobs, Operator, ftj_manifest, success_message, wait_for

pytestmark = pytest.mark.cluster

Rule = tuple[str, str, str]  # apiGroup, resource, verb
NO_NODE = "nodeSelector.finetune\\.dev/test-no-such-node=true"
# What reconcile needs in a namespace it watches (operator/finetune_operator/core/kube.py + kopf's watches).
NAMESPACED: set[Rule] = {
    *{("finetune.dev", "finetunejobs", v) for v in ("list", "watch")},
    ("finetune.dev", "finetunejobs/status", "patch"),
    ("finetune.dev", "finetunejobs/finalizers", "update"),
    # a FineTuneSweep's trials (sweeps.py): created, read back after a raced create, suspended or promoted
    *{("finetune.dev", "finetunejobs", v) for v in ("get", "create", "patch")},
    *{("finetune.dev", "finetunesweeps", v) for v in ("list", "watch")},
    ("finetune.dev", "finetunesweeps/status", "patch"),
    ("finetune.dev", "finetunesweeps/finalizers", "update"),
    # ModelServers (modelserver/): watched, their status written, the owned objects' finalizers; each server's
    # ConfigMaps (the desired list, the replicas' report) watched, get also granted to its sidecar's Role
    *{("finetune.dev", "modelservers", v) for v in ("list", "watch")},
    ("finetune.dev", "modelservers/status", "patch"),
    ("finetune.dev", "modelservers/finalizers", "update"),
    *{("", "configmaps", v) for v in ("get", "list", "watch")},
    *{("batch", "jobs", v) for v in ("get", "list", "watch", "create", "patch", "delete")},
    # pods: observed, and the data check's bare pod created, deleted and read back (get) after a 409
    *{("", "pods", v) for v in ("get", "list", "watch", "create", "delete")},
    *{("apps", "deployments", v) for v in ("list", "watch", "create", "patch", "delete")},
    *{
        (g, r, v)
        for g, r in (("", "configmaps"), ("", "services"), ("policy", "poddisruptionbudgets"))
        for v in ("create", "patch", "delete")
    },
    ("", "serviceaccounts", "create"),
    ("rbac.authorization.k8s.io", "roles", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "create"),
    # a trainer Role an older operator made is put back to the current rules (PUT, uid-bound; the policy admits it
    # only for a Role a finetune.dev object already controls)
    ("rbac.authorization.k8s.io", "roles", "update"),
    # ownership (issue #24): who controls an object is read before applying over, adopting or deleting it, and a
    # ModelServer's replicas are the pods of the ReplicaSets its Deployment controls (watched, like its pods)
    *{
        (g, r, "get")
        for g, r in (
            ("", "services"),
            ("policy", "poddisruptionbudgets"),
            ("", "serviceaccounts"),
            ("apps", "deployments"),
        )
    },
    *{("rbac.authorization.k8s.io", r, "get") for r in ("roles", "rolebindings")},
    *{("apps", "replicasets", v) for v in ("list", "watch")},
    # serving secure by default (issue #24): the NetworkPolicy in front of every server, applied like the bundle,
    # and the API key Secrets the operator generates (create only: never read, updated or deleted)
    *{("networking.k8s.io", "networkpolicies", v) for v in ("get", "create", "patch", "delete")},
    ("", "secrets", "create"),
    ("", "secrets", "get"),
    ("", "events", "create"),
}
CLUSTER_SCAN: set[Rule] = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
NAMESPACE_SCAN: set[Rule] = {("", "namespaces", v) for v in ("list", "watch")}
EVERYONE = {"authorization.k8s.io", "authentication.k8s.io"}  # self reviews every authenticated user has
# leader election (chart default), in the release namespace only: create, and get/update of its one Lease by name
LEADER_ELECTION: set[Rule] = {
    ("coordination.k8s.io", "leases", "create"),
    *{("coordination.k8s.io", "leases (by name)", v) for v in ("get", "update")},
}


def rules_in(identity: Identity, namespace: str) -> set[Rule]:
    """The subject's resource rules in `namespace` as RBAC computes them (SelfSubjectRulesReview)."""
    from kubernetes import client

    review: Any = client.AuthorizationV1Api(identity.api_client).create_self_subject_rules_review(
        client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace))
    )
    found: set[Rule] = set()
    for rule in review.status.resource_rules:
        assert not rule.resource_names or set(rule.api_groups) <= EVERYONE | {"coordination.k8s.io"}, rule
        named = " (by name)" if rule.resource_names else ""
        for group in rule.api_groups:
            if group in EVERYONE:
                continue
            found |= {(group, r + named, v) for r in rule.resources for v in rule.verbs}
    return found


def forbidden(call: Callable[[], Any]) -> bool:
    from kubernetes import client

    try:
        call()
    except client.ApiException as error:
        return status_of(error) == 403
    return False


def allowed(call: Callable[[], Any]) -> bool:
    """RBAC let the request through (404 and 409 are the API's answers after authorization)."""
    from kubernetes import client

    try:
        call()
    except client.ApiException as error:
        return status_of(error) in (404, 409)
    return True


@pytest.fixture
def chart_identity(cluster: Any, namespace: str, other_namespace: str, crd: str, tmp_path: Path) -> Iterator[Identity]:
    """The chart installed in `namespace` watching `other_namespace`; its ServiceAccount's token."""
    release = release_name()
    helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        f"watchNamespaces={{{other_namespace}}}",
        "--set-string",
        NO_NODE,
        kubeconfig=cluster.kubeconfig,
    )
    try:
        yield service_account_identity(cluster, namespace, f"{release}-finetune-operator", tmp_path)
    finally:
        helm("uninstall", release, "-n", namespace, kubeconfig=cluster.kubeconfig)


def test_operator_rules_are_exactly_what_reconcile_needs(
    chart_identity: Identity, namespace: str, other_namespace: str
) -> None:
    assert rules_in(chart_identity, other_namespace) == NAMESPACED | CLUSTER_SCAN | NAMESPACE_SCAN
    # its own namespace holds nothing namespaced but the leader election's Lease; besides, the cluster-scoped watches
    assert rules_in(chart_identity, namespace) == CLUSTER_SCAN | NAMESPACE_SCAN | LEADER_ELECTION


def test_default_install_reconciles_only_the_release_namespace(
    cluster: Any, namespace: str, other_namespace: str, crd: str, tmp_path: Path
) -> None:
    """No watchNamespaces and no clusterWide: the operator's namespaced rights are in its own namespace only."""
    release = release_name()
    helm("install", release, str(CHART), "-n", namespace, "--set-string", NO_NODE, kubeconfig=cluster.kubeconfig)
    try:
        identity = service_account_identity(cluster, namespace, f"{release}-finetune-operator", tmp_path)
        assert rules_in(identity, namespace) == NAMESPACED | CLUSTER_SCAN | NAMESPACE_SCAN | LEADER_ELECTION
        for elsewhere in (other_namespace, "default", "kube-system"):
            assert rules_in(identity, elsewhere) == CLUSTER_SCAN | NAMESPACE_SCAN, elsewhere
    finally:
        helm("uninstall", release, "-n", namespace, kubeconfig=cluster.kubeconfig)


def test_cluster_wide_install_is_an_opt_in_without_any_secret_read(
    cluster: Any, namespace: str, crd: str, tmp_path: Path
) -> None:
    from kubernetes import client

    release = release_name()
    helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        "clusterWide=true",
        "--set-string",
        NO_NODE,
        kubeconfig=cluster.kubeconfig,
    )
    try:
        identity = service_account_identity(cluster, namespace, f"{release}-finetune-operator", tmp_path)
        assert rules_in(identity, "default") == (NAMESPACED - {("", "secrets", "get")}) | CLUSTER_SCAN
        core = client.CoreV1Api(identity.api_client)
        assert forbidden(lambda: core.read_namespaced_secret("anything", "kube-system"))
        assert forbidden(lambda: core.read_namespaced_secret("anything", namespace))
    finally:
        helm("uninstall", release, "-n", namespace, kubeconfig=cluster.kubeconfig)


def _refused_by_policy(call: Callable[[], Any]) -> bool:
    """The chart's admission policy (not RBAC) refused the request: 422 naming the policy."""
    from kubernetes import client

    try:
        call()
    except client.ApiException as error:
        return status_of(error) == 422 and "-workload-rbac" in (error.body or "")
    return False


def test_admission_policy_lets_the_operator_create_only_its_workloads_roles(
    cluster: Any, chart_identity: Identity, other_namespace: str, jobs: Jobs
) -> None:
    """RBAC cannot name what is created: the operator's token (which holds get/patch on ConfigMaps and get on
    Secrets, so RBAC's escalation check would pass) may still create only the builders' Role and RoleBinding shapes."""
    from finetune_operator.api.objects import Owner
    from finetune_operator.builders.rbac import trainer_rbac
    from kubernetes import client

    team = other_namespace
    created = jobs.create(team, ftj_manifest("owner"))
    owner = Owner(team, "owner", created["metadata"]["uid"])
    reference = client.V1OwnerReference(
        api_version=f"{GROUP}/{VERSION}", kind="FineTuneJob", name="owner", uid=owner.uid, controller=True
    )
    rbac = client.RbacAuthorizationV1Api(chart_identity.api_client)

    def role(name: str, rule: Any, owned: bool = True) -> Callable[[], Any]:
        meta = client.V1ObjectMeta(name=name, owner_references=[reference] if owned else None)
        return lambda: rbac.create_namespaced_role(team, client.V1Role(metadata=meta, rules=[rule]))

    def binding(name: str, role_name: str, subject: Any) -> Callable[[], Any]:
        meta = client.V1ObjectMeta(name=name, owner_references=[reference])
        ref = client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role_name)
        body = client.V1RoleBinding(metadata=meta, role_ref=ref, subjects=[subject])
        return lambda: rbac.create_namespaced_role_binding(team, body)

    named_cm = client.V1PolicyRule(api_groups=[""], resources=["configmaps"], resource_names=["a"], verbs=["get"])
    all_cms = client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "patch"])
    a_secret = client.V1PolicyRule(api_groups=[""], resources=["secrets"], resource_names=["s3-creds"], verbs=["get"])
    delete = client.V1PolicyRule(api_groups=["batch"], resources=["jobs"], resource_names=["j"], verbs=["delete"])
    # the policy loads asynchronously after the install: wait until it refuses a broad Role
    wait_for("the admission policy in force", lambda: _refused_by_policy(role("probe-broad", all_cms)), timeout=60)
    refused = [
        role("probe", named_cm, owned=False),  # not garbage-collected with an owner
        role("probe", a_secret),  # a Secret, even by name
        role("probe", delete),  # a verb beyond get/patch
    ]
    outcomes = [_refused_by_policy(call) for call in refused]
    assert all(outcomes), [i for i, ok in enumerate(outcomes) if not ok]

    # what the operator really makes (builders/rbac.py) passes both RBAC and the policy
    for manifest in trainer_rbac(owner):
        if manifest["kind"] == "Role":
            rbac.create_namespaced_role(team, manifest)
        elif manifest["kind"] == "RoleBinding":
            rbac.create_namespaced_role_binding(team, manifest)
    # bindings RBAC would allow (the Roles exist and the operator holds every rule in them), refused by the policy:
    # the trainer's Role to another ServiceAccount or a user, under another name, and the operator's own Role
    trainer = trainer_rbac(owner)[1]["metadata"]["name"]
    operator_role = chart_identity.username.split(":")[-1]
    user = client.RbacV1Subject(kind="User", name=trainer, api_group="rbac.authorization.k8s.io")
    refused = [
        binding(trainer + "-x", trainer, client.RbacV1Subject(kind="ServiceAccount", name=trainer, namespace=team)),
        binding("probe", trainer, client.RbacV1Subject(kind="ServiceAccount", name="probe", namespace=team)),
        binding(trainer + "-u", trainer, user),
        binding("steal", operator_role, client.RbacV1Subject(kind="ServiceAccount", name="steal", namespace=team)),
    ]
    outcomes = [_refused_by_policy(call) for call in refused]
    assert all(outcomes), [i for i, ok in enumerate(outcomes) if not ok]

    # Secrets (create only, for generated API keys): only an owned `*-api-key` holding the one key apiKey
    core = client.CoreV1Api(chart_identity.api_client)

    def secret(name: str, data: dict[str, str], owned: bool = True) -> Callable[[], Any]:
        meta = client.V1ObjectMeta(name=name, owner_references=[reference] if owned else None)
        return lambda: core.create_namespaced_secret(team, client.V1Secret(metadata=meta, type="Opaque", data=data))

    key = {"apiKey": "a2V5"}
    refused = [
        secret("s3-creds-2", {"AWS_ACCESS_KEY_ID": "eA=="}),  # storage credentials of its choosing
        secret("owner-api-key-x", key),  # another name
        secret("probe-api-key", {**key, "other": "eA=="}),  # more than the key
        secret("loose-api-key", key, owned=False),  # not garbage-collected with an owner
    ]
    outcomes = [_refused_by_policy(call) for call in refused]
    assert all(outcomes), [i for i, ok in enumerate(outcomes) if not ok]
    secret("owner-api-key", key)()  # what builders/apikey.py makes passes both RBAC and the policy
    # Role update (a trainer Role an older operator made, put back): only of a Role a finetune.dev object controls
    cluster.rbac.create_namespaced_role(
        team, client.V1Role(metadata=client.V1ObjectMeta(name="teams-own"), rules=[named_cm])
    )
    theirs = cluster.rbac.read_namespaced_role("teams-own", team)
    theirs.metadata.owner_references = [reference]  # claiming it in the same request does not help
    assert _refused_by_policy(lambda: rbac.replace_namespaced_role("teams-own", team, theirs))
    (trainer_role,) = [m for m in trainer_rbac(owner) if m["kind"] == "Role"]
    current = rbac.read_namespaced_role(trainer_role["metadata"]["name"], team)
    rbac.replace_namespaced_role(current.metadata.name, team, current)  # the operator's own: admitted


def test_admission_policy_lets_the_operator_create_and_delete_only_data_check_pods(
    cluster: Any, chart_identity: Identity, other_namespace: str, jobs: Jobs
) -> None:
    """RBAC's create and delete on pods (the data check runs as a bare pod) reach every pod of a watched namespace;
    the admission policy admits from the operator's token only the data check's shape: a validator pod a
    FineTuneJob controls, without a token, non-root, unprivileged, only configMap and emptyDir volumes, no host
    namespaces; and deletes only of such a pod. The admitted pod is the builders' own (training.validation_pod)."""
    import copy

    from finetune_operator.api.finetunejob import parse_spec
    from finetune_operator.api.labels import COMPONENT_TRAINER, LABEL_COMPONENT
    from finetune_operator.api.objects import Owner
    from finetune_operator.builders.rbac import trainer_service_account
    from finetune_operator.builders.training import validation_pod
    from finetune_operator.core.settings import Settings
    from kubernetes import client

    team = other_namespace
    manifest = ftj_manifest("owner")
    created = jobs.create(team, manifest)
    owner = Owner(team, "owner", created["metadata"]["uid"])
    # the pod runs as the run's trainer ServiceAccount (no token mounted): it must exist for any pod to be admitted
    cluster.core.create_namespaced_service_account(team, trainer_service_account(owner))
    good = validation_pod(parse_spec(manifest["spec"]), owner, 1, "hash", Settings(), 1)
    core = client.CoreV1Api(chart_identity.api_client)

    def pod(change: Callable[[dict[str, Any]], None]) -> Callable[[], Any]:
        body = copy.deepcopy(good)
        body["metadata"]["name"] += "-bad"
        change(body)
        return lambda: core.create_namespaced_pod(team, body, dry_run="All")  # admission runs; nothing is stored

    def container(key: str, value: Any, containers: str = "containers") -> Callable[[dict[str, Any]], None]:
        def change(body: dict[str, Any]) -> None:
            body["spec"][containers][0]["securityContext"][key] = value

        return change

    def privileged(body: dict[str, Any]) -> None:
        context = body["spec"]["containers"][0]["securityContext"]
        context["privileged"] = True
        del context["allowPrivilegeEscalation"]  # false with privileged is invalid before admission

    def host_path(body: dict[str, Any]) -> None:
        body["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
        body["spec"]["containers"][0]["volumeMounts"].append({"name": "host", "mountPath": "/host"})

    def projected_token(body: dict[str, Any]) -> None:
        token = {"serviceAccountToken": {"path": "token"}}
        body["spec"]["volumes"].append({"name": "token", "projected": {"sources": [token]}})

    def init_container(body: dict[str, Any]) -> None:
        init = copy.deepcopy(body["spec"]["containers"][0])
        init["name"] = "init"
        del init["securityContext"]["allowPrivilegeEscalation"]
        body["spec"]["initContainers"] = [init]

    def spec_field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda body: body["spec"].update({key: value})

    def label(value: str) -> Callable[[dict[str, Any]], None]:
        return lambda body: body["metadata"]["labels"].update({LABEL_COMPONENT: value})

    def pod_non_root(body: dict[str, Any]) -> None:
        body["spec"]["securityContext"]["runAsNonRoot"] = False

    # the policy loads asynchronously after the install: wait until it refuses an unowned pod
    unowned = pod(lambda body: body["metadata"].pop("ownerReferences"))
    wait_for("the admission policy in force", lambda: _refused_by_policy(unowned), timeout=60)
    refused = {
        "privileged": pod(privileged),
        "escalation": pod(container("allowPrivilegeEscalation", True)),
        "capability": pod(container("capabilities", {"drop": ["ALL"], "add": ["NET_RAW"]})),
        "container root": pod(container("runAsNonRoot", False)),
        "init container": pod(init_container),
        "hostPath": pod(host_path),
        "projected token": pod(projected_token),
        "token": pod(spec_field("automountServiceAccountToken", True)),
        "hostNetwork": pod(spec_field("hostNetwork", True)),
        "hostPID": pod(spec_field("hostPID", True)),
        "pod root": pod(pod_non_root),
        "trainer pod": pod(label(COMPONENT_TRAINER)),
        "no component": pod(lambda body: body["metadata"]["labels"].pop(LABEL_COMPONENT)),
        "owned, not controlled": pod(lambda body: body["metadata"]["ownerReferences"][0].update(controller=False)),
    }
    outcomes = {name: _refused_by_policy(call) for name, call in refused.items()}
    assert all(outcomes.values()), [name for name, ok in outcomes.items() if not ok]

    # the builders' data check pod passes RBAC and the policy; the operator may delete it
    core.create_namespaced_pod(team, good)
    core.delete_namespaced_pod(good["metadata"]["name"], team, grace_period_seconds=0)
    # pods RBAC lets it delete, refused by the policy: a training pod (the Job controller's) and a tenant's own
    trainer_pod = copy.deepcopy(good)
    trainer_pod["metadata"].update(name="owner-trainer-pod", labels={LABEL_COMPONENT: COMPONENT_TRAINER})
    tenants = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tenants-own"}, "spec": good["spec"]}
    for other in (trainer_pod, tenants):
        cluster.core.create_namespaced_pod(team, other)
        name = other["metadata"]["name"]
        assert _refused_by_policy(lambda name=name: core.delete_namespaced_pod(name, team)), name
        cluster.core.delete_namespaced_pod(name, team, grace_period_seconds=0)


def test_operator_requests_outside_its_rights_are_refused(
    cluster: Any, chart_identity: Identity, namespace: str, other_namespace: str
) -> None:
    from kubernetes import client

    team, api = other_namespace, chart_identity.api_client
    core, custom, rbac = (
        client.CoreV1Api(api),
        client.CustomObjectsApi(api),
        client.RbacAuthorizationV1Api(api),
    )
    cluster.core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="elsewhere"), string_data={"k": "v"})
    )
    Jobs(cluster).create(team, ftj_manifest("mine"))
    # allowed: what reconcile does
    assert allowed(lambda: core.read_namespaced_secret("s3-creds", team))
    assert allowed(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, team, PLURAL))
    assert allowed(
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, team, PLURAL, "mine", {"status": {"phase": "Pending"}}
        )
    )
    # refused: secrets elsewhere or in bulk, pods outside the watched namespace, pod logs and patch, a sweep's spec,
    # deleting a FineTuneJob, cluster RBAC, more rights than it holds (a FineTuneJob's spec can be patched: a sweep's
    # trials are suspended or promoted; the operator only ever patches the FineTuneJobs it created as trials, never
    # one a user made). Pods in the watched namespace: RBAC allows create and delete (the data check's bare pod),
    # the admission policy bounds them (test_admission_policy_lets_the_operator_create_and_delete_only_data_check_pods)
    refused: list[Callable[[], Any]] = [
        lambda: core.read_namespaced_secret("elsewhere", namespace),
        lambda: core.list_namespaced_secret(team),
        lambda: core.list_secret_for_all_namespaces(),
        lambda: core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="p"),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
            ),
        ),
        lambda: core.read_namespaced_pod_log("any", team),
        lambda: core.patch_namespaced_pod("any", team, {"metadata": {"labels": {"x": "y"}}}),
        lambda: core.delete_namespace(team),
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, team, "finetunesweeps", "any", {"spec": {"parallelism": 9}}
        ),
        lambda: custom.delete_namespaced_custom_object(GROUP, VERSION, team, PLURAL, "mine"),
        lambda: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
        lambda: rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name="fto-escalate"))),
        lambda: rbac.create_namespaced_role(
            team,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="grab"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["list"])],
            ),
        ),
        lambda: client.BatchV1Api(api).create_namespaced_job(
            namespace, client.V1Job(metadata=client.V1ObjectMeta(name="j"))
        ),
    ]
    outcomes = [forbidden(call) for call in refused]
    assert all(outcomes), [i for i, ok in enumerate(outcomes) if not ok]


def test_secret_is_read_in_the_jobs_namespace_only_and_never_copied(
    cluster: Any, chart_identity: Identity, namespace: str, other_namespace: str, jobs: Jobs, tmp_path: Path
) -> None:
    """Runs the operator on the chart's token, then plays the trainer with the per-run ServiceAccount."""
    from kubernetes import client

    team = other_namespace
    values = {"AWS_ACCESS_KEY_ID": "AKIA-TENANT-ONLY", "AWS_SECRET_ACCESS_KEY": "tenant-secret-value-123"}
    # the same name exists only in another namespace: the operator must not find (or even look for) it there
    cluster.core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), string_data=values)
    )
    operator = Operator(chart_identity.kubeconfig, [team], tmp_path / "operator.log", ["--health-port", "0"]).start()
    try:
        jobs.create(team, ftj_manifest("tenant", storage={"credentialsSecret": "creds"}))
        pending = jobs.wait_phase(team, "tenant", "Pending")
        wait_for(
            "SecretMissing",
            lambda: jobs.status(team, "tenant").get("error", {}).get("code") == "SecretMissing",
        )
        assert not jobs.training_jobs(team, "tenant")
        assert pending["observedGeneration"] == 1
        cluster.core.create_namespaced_secret(
            team, client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), string_data=values)
        )
        pod = jobs.running_pod(team, "tenant-r1")
        env = {e.name: e for e in pod.spec.containers[0].env}
        assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "creds"

        # never copied: no secret made by the operator, no value in anything it created
        secrets = cluster.core.list_namespaced_secret(team).items
        assert [s.metadata.name for s in secrets] == ["creds"]
        children = [
            *cluster.core.list_namespaced_config_map(team).items,
            *cluster.batch.list_namespaced_job(team).items,
            *cluster.core.list_namespaced_service_account(team).items,
        ]
        dumped = json.dumps([cluster.api_client.sanitize_for_serialization(c) for c in children])
        assert not any(value in dumped for value in values.values())

        _trainer_may_only_patch_its_progress(cluster, team, jobs, tmp_path)
        jobs.finish_pod(team, pod.metadata.name, 0, success_message())
        jobs.wait_phase(team, "tenant", "Succeeded")
        log = operator.log_path.read_text(errors="replace")
        assert "403" not in log and "orbidden" not in log, operator.log_tail()
    finally:
        operator.stop()


def _trainer_may_only_patch_its_progress(cluster: Any, team: str, jobs: Jobs, tmp_path: Path) -> None:
    """The per-job ServiceAccount that the operator (on the chart's rights) made: its own progress ConfigMap only."""
    from kubernetes import client

    jobs.create(team, ftj_manifest("neighbour"))
    trainer = service_account_identity(cluster, team, "tenant-trainer", tmp_path).api_client
    core, custom, batch = (
        client.CoreV1Api(trainer),
        client.CustomObjectsApi(trainer),
        client.BatchV1Api(trainer),
    )
    report = {"run": 1, "stage": "training", "step": 1, "totalSteps": 4, "percent": 25}
    core.patch_namespaced_config_map("tenant-progress", team, {"data": {"progress.json": json.dumps(report)}})
    progress = {"status": {"progress": report}}
    refused: list[Callable[[], Any]] = [
        lambda: custom.patch_namespaced_custom_object_status(GROUP, VERSION, team, PLURAL, "tenant", progress),
        lambda: custom.get_namespaced_custom_object_status(GROUP, VERSION, team, PLURAL, "tenant"),
        lambda: custom.patch_namespaced_custom_object_status(GROUP, VERSION, team, PLURAL, "neighbour", progress),
        lambda: core.patch_namespaced_config_map("neighbour-progress", team, {"data": {"progress.json": "{}"}}),
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, team, PLURAL, "tenant", {"spec": {"suspend": True}}
        ),
        lambda: custom.list_namespaced_custom_object(GROUP, VERSION, team, PLURAL),
        lambda: core.read_namespaced_secret("creds", team),
        lambda: core.list_namespaced_pod(team),
        lambda: core.read_namespaced_config_map("tenant-r1-config", team),
        lambda: batch.list_namespaced_job(team),
        lambda: core.create_namespaced_event(
            team,
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name="x"), involved_object=client.V1ObjectReference()
            ),
        ),
    ]
    outcomes = [forbidden(call) for call in refused]
    assert all(outcomes), [i for i, ok in enumerate(outcomes) if not ok]


def test_the_admins_policy_refuses_node_identity_and_unlisted_placement_before_any_pod(
    operator_factory: Callable[..., Operator], jobs: Jobs, namespace: str
) -> None:
    """The chart's default policy (no node identity, no priority class, no toleration but the allowed one), given
    to the operator as the chart's Deployment gives it; refusals name the field and create nothing."""
    from tests.support.kwok import KWOK_TOLERATION

    allowed = json.dumps([KWOK_TOLERATION])
    operator_factory(
        namespace,
        args=["--no-allow-node-identity", "--allowed-priority-classes", "", "--allowed-tolerations", allowed],
    )
    jobs.create(namespace, ftj_manifest("nodes"))  # no credentialsSecret: the node's identity
    placed = ftj_manifest("placed", storage={"credentialsSecret": "creds"})
    placed["spec"]["resources"]["priorityClassName"] = "system-node-critical"
    placed["spec"]["resources"]["tolerations"].append({"operator": "Exists"})  # tolerates every taint
    jobs.create(namespace, placed)
    server = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelServer",
        "metadata": {"name": "shared"},
        "spec": {"baseModelUri": "s3://models/tiny/"},
    }
    jobs.cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", server)

    nodes = jobs.wait_phase(namespace, "nodes", "Failed")
    assert nodes["error"]["code"] == "PolicyRefused"
    assert "spec.storage.credentialsSecret is empty" in nodes["error"]["message"]
    refused = jobs.wait_phase(namespace, "placed", "Failed")["error"]
    assert refused["code"] == "PolicyRefused"
    assert "spec.resources.priorityClassName 'system-node-critical'" in refused["message"]
    assert "spec.resources.tolerations[1] {operator: Exists}" in refused["message"]
    assert "tolerations[0]" not in refused["message"]  # kwok's taint is on the allow-list

    def server_ready() -> dict[str, Any] | None:
        body = jobs.cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", "shared")
        conditions = (body.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Ready"), None)

    ready = wait_for("the ModelServer's Ready condition", server_ready)
    assert ready["status"] == "False" and ready["reason"] == "PolicyRefused"
    assert "spec.storage.credentialsSecret is empty" in ready["message"]
    assert not jobs.cluster.batch.list_namespaced_job(namespace).items
    assert not jobs.cluster.apps.list_namespaced_deployment(namespace).items
    accounts = [a.metadata.name for a in jobs.cluster.core.list_namespaced_service_account(namespace).items]
    assert not [a for a in accounts if a.endswith(("-trainer", "-server-sync"))], accounts

    # fixed by the tenant: the same run starts (a refused run never counts as finished)
    from kubernetes import client

    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), string_data={"AWS_ACCESS_KEY_ID": "a"})
    jobs.cluster.core.create_namespaced_secret(namespace, secret)
    jobs.patch_spec(namespace, "placed", {"resources": {"priorityClassName": None, "tolerations": [KWOK_TOLERATION]}})
    wait_for("placed's Job", lambda: jobs.training_jobs(namespace, "placed"))
    assert jobs.status(namespace, "placed")["run"] == 1
