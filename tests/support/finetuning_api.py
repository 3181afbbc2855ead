"""What the fine-tuning API's integration tests set up on a real API server: tenants (a ServiceAccount, a Role
bound to it, a TokenRequest token), the service's own identity bound to exactly the ClusterRole the chart gives
it, and the service itself on a free local port.

Why one home: the files tests and the jobs tests need the same tenants and the same service, and RBAC they set
up must be in force (SubjectAccessReview) before a request is sent, or a test would see a 403 that only says the
binding had not propagated yet.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helm.chart import render, service_account_identity
from tests.support.ports import free_port
from tests.support.waiting import wait_for

API_ACCOUNT = "finetuning-api"


def token(cluster: Any, namespace: str, name: str) -> str:
    """A one-hour TokenRequest token of ServiceAccount `name` (what `kubectl create token` gives a user)."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    return str(cluster.core.create_namespaced_service_account_token(name, namespace, request).status.token)


def service_account(cluster: Any, namespace: str, name: str) -> None:
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})


def bind(cluster: Any, namespace: str, name: str, rules: list[dict[str, Any]]) -> None:
    """A Role `name` with `rules`, bound to the ServiceAccount `name` of the same namespace."""
    cluster.rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )


def allowed(cluster: Any, user: str, namespace: str, verb: str, resource: str, group: str, name: str = "") -> bool:
    """SubjectAccessReview: may ServiceAccount user `user` (with its groups) do this now?"""
    from kubernetes import client

    review = client.AuthorizationV1Api(cluster.api_client).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb=verb, resource=resource, group=group, name=name or None
                ),
            )
        )
    )
    return bool(review.status and review.status.allowed)


def chart_api_rules() -> list[dict[str, Any]]:
    """The rules of the ClusterRole the chart gives the API's ServiceAccount (api.enabled)."""
    docs = render("fto", "finetune-system", {"api.enabled": "true", "api.files.bucket": "files"})
    (role,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-api")]
    return list(role["rules"])


@contextmanager
def service_identity(cluster: Any, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """The service's own ServiceAccount in `namespace`, bound to exactly the chart's ClusterRole for it (so a
    request that works proves the service acted as its caller); yields its kubeconfig, and removes the binding."""
    service_account(cluster, namespace, API_ACCOUNT)
    role = f"t-finetuning-api-{uuid.uuid4().hex[:8]}"
    cluster.rbac.create_cluster_role({"metadata": {"name": role}, "rules": chart_api_rules()})
    cluster.rbac.create_cluster_role_binding(
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": API_ACCOUNT, "namespace": namespace}],
        }
    )
    try:
        user = f"system:serviceaccount:{namespace}:{API_ACCOUNT}"
        wait_for(
            "the API's RBAC",
            lambda: allowed(cluster, user, "", "create", "tokenreviews", "authentication.k8s.io") or None,
        )
        yield service_account_identity(cluster, namespace, API_ACCOUNT, tmp_path).kubeconfig
    finally:
        cluster.rbac.delete_cluster_role_binding(role)
        cluster.rbac.delete_cluster_role(role)


def serve(config: Any) -> tuple[int, Callable[[], None]]:
    """A replica of the service (its own app, its own memory) on a free port; returns the port and its stop."""
    import uvicorn
    from finetune_trainer.finetuning_api.app import build_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("the API to listen", lambda: server.started or None, timeout=30)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return port, stop
