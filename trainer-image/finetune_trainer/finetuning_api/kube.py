"""Kubernetes clients: the service's own (TokenReview, SubjectAccessReview only) and one impersonating a caller.

Why impersonation: every Kubernetes action a route takes (reading the namespace's credentials Secret, creating
a FineTuneJob) must be allowed or refused by the caller's own RBAC, exactly as with kubectl; the service's own
ServiceAccount holds nothing else. Kubernetes reads each `Impersonate-Group` header line as one group (a
comma-joined value would be one group named "a,b"), and the generated client keeps headers in a plain dict, so
`ImpersonatingClient` adds the groups as repeated header lines itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from finetune_trainer.finetuning_api.config import ApiConfig

KubeFactory = Callable[[], Any]
"""Returns the service's own kubernetes.client.Configuration (in-cluster or from a kubeconfig)."""


def default_kube_factory(config: ApiConfig) -> KubeFactory:
    """The service's Configuration: from `config.kubeconfig` when set, else the pod's ServiceAccount."""

    def load() -> Any:
        from kubernetes import client
        from kubernetes import config as kube_config

        configuration = client.Configuration()
        if config.kubeconfig:
            kube_config.load_kube_config(config_file=config.kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration

    return load


def service_client(configuration: Any) -> Any:
    """An ApiClient acting as the service itself."""
    from kubernetes import client

    return client.ApiClient(configuration)


def impersonating_client(configuration: Any, username: str, groups: tuple[str, ...]) -> Any:
    """An ApiClient whose every request carries Impersonate-User and one Impersonate-Group line per group."""
    from kubernetes import client
    from urllib3 import HTTPHeaderDict

    class ImpersonatingClient(client.ApiClient):  # type: ignore[misc]
        def call_api(self, method: str, url: str, header_params: Any = None, *args: Any, **kwargs: Any) -> Any:
            headers = HTTPHeaderDict()
            for name, value in (header_params or {}).items():
                if name.lower() not in ("impersonate-user", "impersonate-group"):
                    headers[name] = value
            headers["Impersonate-User"] = username
            for group in groups:
                headers.add("Impersonate-Group", group)
            return super().call_api(method, url, headers, *args, **kwargs)

    return ImpersonatingClient(copy.copy(configuration))
