"""The objects around a server's pods, whichever resource owns them (a FineTuneJob's own server, a ModelServer):
the rolling Deployment, the Service in front of it, its PodDisruptionBudget and the NetworkPolicy that limits who
reaches it. One builder each.

Rolls are zero-downtime (maxUnavailable 0, one surge pod); the server drains in-flight requests on SIGTERM
within the grace period; the PDB lets a node drain take one replica at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_operator.api.objects import Manifest
from finetune_operator.builders.common import pod_security_context
from finetune_operator.builders.containers import PORT


def server_pod_spec(pod: dict[str, Any], placement: dict[str, Any], service_account: str = "") -> dict[str, Any]:
    """A server pod: no token unless a container mounts its own (a ModelServer's sidecar), hardened, the engine's
    containers and volumes, then where it may run."""
    return {
        **({"serviceAccountName": service_account} if service_account else {}),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 45,  # the server drains in-flight requests for 30 s on SIGTERM
        "securityContext": pod_security_context(),
        **pod,
        **placement,
    }


def server_deployment(
    metadata: dict[str, Any],
    replicas: int,
    selector: dict[str, str],
    template_metadata: dict[str, Any],
    pod_spec: dict[str, Any],
) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def server_service(metadata: dict[str, Any], selector: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def server_pdb(metadata: dict[str, Any], selector: dict[str, str]) -> Manifest:
    """Made only with more than one replica: with one, a PDB would block every node drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""The label the API server sets on every namespace to its own name (not writable otherwise), so a namespace
selector on it names namespaces exactly."""


def server_network_policy(
    metadata: dict[str, Any],
    selector: dict[str, str],
    namespaces: Sequence[str],
    api_pods: tuple[str, dict[str, str]] | None = None,
) -> Manifest:
    """Ingress to the server pods' serving port only from pods of their own namespace and of `namespaces` (a
    ModelServer's allowedNamespaces), and from the fine-tuning API's pods (`api_pods`: their namespace and
    labels, settings.api_pods), which proxy a tenant's chat to its model; everything else is dropped by a CNI
    that enforces NetworkPolicies. Egress is left open: the pods fetch models from S3, whose address the operator
    does not know. The key is still needed from an allowed pod: the policy narrows who can try it."""
    peers: list[dict[str, Any]] = [{"podSelector": {}}]
    others = sorted(set(namespaces) - {str(metadata["namespace"])})
    if others:
        expression = {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": others}
        peers.append({"namespaceSelector": {"matchExpressions": [expression]}})
    if api_pods is not None:
        namespace, labels = api_pods
        peers.append(
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
                "podSelector": {"matchLabels": dict(sorted(labels.items()))},
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": PORT}]}],
        },
    }
