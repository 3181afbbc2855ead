"""Kubernetes clients: the service's own (TokenReview, SubjectAccessReview only) and one impersonating a caller.

Why impersonation: every Kubernetes action a route takes (reading the namespace's credentials Secret, creating
a FineTuneJob) must be allowed or refused by the caller's own RBAC, exactly as with kubectl; the service's own
ServiceAccount holds nothing else. Kubernetes reads each `Impersonate-Group` header line as one group (a
comma-joined value would be one group named "a,b"), and the generated client keeps headers in a plain dict, so
`ImpersonatingClient` adds the groups as repeated header lines itself.
"""

from __future__ import annotations

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


class Kube:
    """The service's Configuration and its own ApiClient, whose connection pool every caller's client shares (a
    client per request, but not a TLS connection per request)."""

    def __init__(self, configuration: Any) -> None:
        from kubernetes import client

        self.configuration = configuration
        self.service = client.ApiClient(configuration)

    def acting_as(self, username: str, groups: tuple[str, ...]) -> Any:
        """A client impersonating this caller, over the shared connections."""
        return impersonating_client(self.configuration, username, groups, rest_client=self.service.rest_client)


def impersonating_client(
    configuration: Any, username: str, groups: tuple[str, ...], rest_client: Any | None = None
) -> Any:
    """An ApiClient whose every request carries Impersonate-User and one Impersonate-Group line per group
    (`rest_client`: the connection pool to use, e.g. the service's own; its own one when None)."""
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

    acting = ImpersonatingClient(configuration)
    if rest_client is not None:
        acting.rest_client = rest_client
    return acting
