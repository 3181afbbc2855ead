"""The trainer's identity: a ServiceAccount whose Role may get and patch only its own FineTuneJob's status.

Why per FineTuneJob: the trainer reports progress by patching `finetunejobs/status`; with `resourceNames`
pinned to this one object, a compromised or buggy trainer cannot touch any other job, nor the spec.
"""

from __future__ import annotations

from finetune_operator import GROUP, PLURAL
from finetune_operator.api.labels import Names
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.common import metadata

COMPONENT = "trainer-rbac"


def trainer_service_account(owner: Owner) -> Manifest:
    names = Names.of(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(owner, names.trainer_account, COMPONENT),
        "automountServiceAccountToken": False,
    }


def trainer_role(owner: Owner) -> Manifest:
    names = Names.of(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(owner, names.trainer_account, COMPONENT),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [owner.name],
                "verbs": ["get", "patch"],
            }
        ],
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
