"""The one module that talks to the Kubernetes API; client exceptions become the operator's two error families.

Every other module builds plain manifests; this one sends them. Failures are classified once, here
(`finetune_operator.core.errors`):
- PermanentError: the API refused the request as invalid (400, 422) - retrying the same spec cannot help;
- TemporaryError: conflicts, throttling, server or network trouble, missing permissions - retry later.
"Already exists" on create and "not found" on delete are not errors (level-triggered: the goal is met).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.core.errors import Conflict, PermanentError, TemporaryError
from finetune_operator.core.metrics import API_REQUESTS, CHILD_CREATE_SECONDS

log = logging.getLogger(__name__)

FIELD_MANAGER = "finetune-operator"
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Secret": "secrets",
    "Event": "events",
    "Pod": "pods",
    "Job": "jobs",
    "Deployment": "deployments",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Lease": "leases",
    KIND: PLURAL,
    "FineTuneSweep": "finetunesweeps",
    "ModelServer": "modelservers",
}
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
REQUEST_TIMEOUT = (5, 30)  # connect, read seconds


def path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    """REST path of a namespaced object (or its collection when name is empty)."""
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    base = f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{base}/{name}" if name else base


def classify(error: ApiException, what: str) -> PermanentError | TemporaryError:
    """Map an API error to the family that says whether retrying can help."""
    detail = what
    try:
        detail = f"{what}: {json.loads(error.body or '{}').get('message', error.reason)}"
    except ValueError:
        detail = f"{what}: {error.reason}"
    if error.status in (400, 422):
        return PermanentError(detail)
    if error.status == 409:
        return Conflict(detail, delay=0.5)
    if error.status == 429:
        return TemporaryError(detail, delay=5)
    if error.status in (401, 403):
        return TemporaryError(detail, delay=30)
    return TemporaryError(detail, delay=5)


class Kube:
    """A small typed facade over the REST API for exactly the calls the reconciler makes."""

    def __init__(self, api_client: Any) -> None:
        self.api = api_client

    @classmethod
    def from_environment(cls, pool_size: int = 8) -> Kube:
        """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            configuration = client.Configuration.get_default_copy()
        except config.ConfigException:
            configuration = client.Configuration()
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = pool_size
        return cls(client.ApiClient(configuration))

    @contextmanager
    def _errors(self, verb: str, what: str, ok: tuple[int, ...] = ()) -> Iterator[list[int]]:
        """Count the request; swallow the statuses in `ok` (reported through the yielded list)."""
        seen: list[int] = []
        API_REQUESTS.labels(verb).inc()
        try:
            yield seen
        except ApiException as error:
            if error.status in ok:
                seen.append(int(error.status))
                return
            raise classify(error, f"{verb} {what}") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise TemporaryError(f"{verb} {what}: {error}", delay=5) from error

    def _call(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> Any:
        """One request through the client's own auth and TLS (kubernetes>=37 request API); JSON back."""
        headers = {"Accept": accept, "Content-Type": content_type}
        params = self.api.param_serialize(
            method=method,
            resource_path=url,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*params, _request_timeout=REQUEST_TIMEOUT)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return json.loads(data) if data else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._errors("get", f"{kind} {namespace}/{name}", ok=(404,)) as seen:
            found: dict[str, Any] = self._call("GET", path(api_version, kind, namespace, name))
        return None if seen else found

    def list(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        """Objects matching a label selector in one namespace (None: all namespaces)."""
        if namespace is None:
            prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            url = f"{prefix}/{PLURALS[kind]}"
        else:
            url = path(api_version, kind, namespace)
        with self._errors("list", f"{kind} in {namespace or 'all namespaces'}"):
            found: dict[str, Any] = self._call("GET", url, query=[("labelSelector", selector)])
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    def exists_metadata(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Whether an object exists, reading only its metadata (never a Secret's data)."""
        with self._errors("get", f"{kind} {namespace}/{name}", ok=(404,)) as seen:
            self._call("GET", path(api_version, kind, namespace, name), accept=METADATA_ONLY)
        return not seen

    def create(self, manifest: Manifest) -> dict[str, Any] | None:
        """Create; None when it already exists (another reconcile or a previous operator made it)."""
        meta = manifest["metadata"]
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        with (
            self._errors("create", f"{manifest['kind']} {meta['namespace']}/{meta['name']}", ok=(409,)) as seen,
            CHILD_CREATE_SECONDS.labels(manifest["kind"]).time(),
        ):
            created: dict[str, Any] = self._call("POST", url, manifest, query=[("fieldManager", FIELD_MANAGER)])
        return None if seen else created

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply as the operator's field manager (creates or converges)."""
        meta = manifest["metadata"]
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        with (
            self._errors("apply", f"{manifest['kind']} {meta['namespace']}/{meta['name']}"),
            CHILD_CREATE_SECONDS.labels(manifest["kind"]).time(),
        ):
            applied: dict[str, Any] = self._call(
                "PATCH",
                url,
                manifest,
                content_type="application/apply-patch+yaml",
                query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            )
        return applied

    def replace(self, manifest: Manifest) -> dict[str, Any]:
        """PUT the whole object; with `metadata.resourceVersion` set, a concurrent writer makes it a Conflict
        (the leader election's compare-and-swap on its Lease)."""
        meta = manifest["metadata"]
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        with self._errors("update", f"{manifest['kind']} {meta['namespace']}/{meta['name']}"):
            replaced: dict[str, Any] = self._call("PUT", url, manifest, query=[("fieldManager", FIELD_MANAGER)])
        return replaced

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *, foreground: bool = False) -> bool:
        """Delete; False when it was already gone. Background: the object goes at once and its dependents
        follow. Foreground: the object stays, marked deleting, until its dependents (a Job's pods) are gone."""
        policy = "Foreground" if foreground else "Background"
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy}
        with self._errors("delete", f"{kind} {namespace}/{name}", ok=(404,)) as seen:
            self._call("DELETE", path(api_version, kind, namespace, name), body)
        return not seen

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        with self._errors("patch", f"Job {namespace}/{name}", ok=(404,)):
            self._call(
                "PATCH",
                path("batch/v1", "Job", namespace, name),
                {"spec": {"suspend": suspend}},
                content_type="application/merge-patch+json",
            )

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        """A JSON merge patch (e.g. dropping a gone pod's key from a ModelServer's report ConfigMap)."""
        with self._errors("patch", f"{kind} {namespace}/{name}", ok=(404,)):
            self._call(
                "PATCH",
                path(api_version, kind, namespace, name),
                body,
                content_type="application/merge-patch+json",
                query=[("fieldManager", FIELD_MANAGER)],
            )

    def patch_status(
        self, namespace: str, name: str, status_patch: dict[str, Any], resource_version: str, kind: str = KIND
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (of a FineTuneJob unless `kind` says otherwise), only if the
        object is still at `resource_version`."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        url = path(f"{GROUP}/{VERSION}", kind, namespace, name) + "/status"
        with self._errors("patch", f"{kind} {namespace}/{name} status"):
            patched: dict[str, Any] = self._call(
                "PATCH",
                url,
                body,
                content_type="application/merge-patch+json",
                query=[("fieldManager", FIELD_MANAGER)],
            )
        return patched

    def post_event(self, owner: Owner, event_type: str, reason: str, message: str, kind: str = KIND) -> None:
        """A core/v1 Event on the FineTuneJob, or the object of `kind` (`kubectl describe` shows it)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": owner.name[:200] + ".", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            with self._errors("create", f"Event for {owner.namespace}/{owner.name}"):
                self._call("POST", path("v1", "Event", owner.namespace), body)
        except TemporaryError as error:  # an event is best effort; never fail a reconcile over one
            log.warning("event not posted: %s", error)
