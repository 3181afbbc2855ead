"""The trainer's identity and its one channel: a ServiceAccount whose Role may patch only the FineTuneJob's
progress ConfigMap, and that ConfigMap.

Why a ConfigMap and not the FineTuneJob's status: the pod's token can be used by any editor of the namespace
(who may run a pod as this ServiceAccount), and the status holds what the operator decides (`published`
names the model that is served). The trainer therefore writes nothing the operator trusts: it patches
`<job>-progress` (`resourceNames` pins that one object, so it cannot touch another job's, nor any other
ConfigMap), and the operator copies a validated subset into `status.progress` (finetunejob/progress.py).
The ConfigMap is the operator's (controller ownerReference), created with the run's other children.
Why not one pre-made ClusterRole that the operator only binds per run (which would spare the operator `create` on
Roles): a ClusterRole cannot name per-run objects, so every trainer of a namespace could then write every run's
progress. The operator's `create` on Roles is bounded instead by RBAC's escalation check and the chart's admission
policy (helm/finetune-operator/templates/admission-policy.yaml; docs/security.md).
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api.hashing import content_hash
from finetune_operator.api.labels import COMPONENT_PROGRESS, Names
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.common import metadata

COMPONENT = "trainer-rbac"
PROGRESS_KEY = "progress.json"
"""The progress ConfigMap's one key: the trainer's latest report, a JSON document (docs/trainer-contract.md 4)."""


def trainer_service_account(owner: Owner) -> Manifest:
    names = Names.of(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(owner, names.trainer_account, COMPONENT),
        "automountServiceAccountToken": False,
    }


def trainer_rules(owner: Owner) -> list[dict[str, Any]]:
    """Everything the trainer may do through the API: the one place its rights are decided.

    Whoever changes them keeps three things in step (tests/helm/test_chart.py fails otherwise): every rule names
    its objects (resourceNames) with get/patch only (the chart's admission policy refuses anything else from the
    operator), and the operator's own Role in the chart (_helpers.tpl) holds each rule, since RBAC lets the operator
    create a Role only with permissions it holds itself.
    """
    names = Names.of(owner.name)
    return [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [names.progress], "verbs": ["patch"]}]


def trainer_rules_hash(owner: Owner) -> str:
    """The hash of the current trainer rules: status.trainerRulesHash records that the job's Role was checked
    against them (a Role an older operator made, e.g. one granting finetunejobs/status, is put back to them)."""
    return content_hash(trainer_rules(owner))


def outdated_role(role: dict[str, Any] | None, owner: Owner) -> bool:
    """Whether an existing trainer Role grants anything but the current rules (None: there is none)."""
    return role is not None and (role.get("rules") or []) != trainer_rules(owner)


def trainer_role(owner: Owner) -> Manifest:
    names = Names.of(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(owner, names.trainer_account, COMPONENT),
        "rules": trainer_rules(owner),
    }


def trainer_role_binding(owner: Owner) -> Manifest:
    names = Names.of(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(owner, names.trainer_account, COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.trainer_account},
        "subjects": [{"kind": "ServiceAccount", "name": names.trainer_account, "namespace": owner.namespace}],
    }


def trainer_rbac(owner: Owner) -> list[Manifest]:
    """ServiceAccount, Role, RoleBinding: in the order they must exist."""
    return [trainer_service_account(owner), trainer_role(owner), trainer_role_binding(owner)]


def progress_config_map(owner: Owner) -> Manifest:
    """The ConfigMap the trainer reports progress in; empty until the first report (the trainer merge-patches
    `data`)."""
    names = Names.of(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, names.progress, COMPONENT_PROGRESS),
        "data": {},
    }
