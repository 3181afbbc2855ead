"""The one module that talks to the Kubernetes API; client exceptions become the operator's two error families.

Every other module builds plain manifests; this one sends them. Failures are classified once, here
(`finetune_operator.core.errors`):
- PermanentError: the API refused the request as invalid (400, 422) - retrying the same spec cannot help;
- TemporaryError: conflicts, throttling, server or network trouble, missing permissions - retry later.
"Already exists" on create and "not found" on delete are not errors (level-triggered: the goal is met).

Ownership (`finetune_operator.api.ownership`) is enforced here, on every write to a child: a create that finds
the name taken, or an apply over an existing object, goes on only when that object's controller ownerReference
is the manifest's own (else NameTaken: nothing is adopted or force-applied over another owner's object); a
delete reads the object's controller first (unless the caller observed its uid) and carries a uid precondition,
so a name that someone else reused in between is never deleted; a patch of a sweep's trial carries the uid and
resourceVersion it was judged by.

Fencing: with leader election, every write first asks the `guard` (`finetune_operator.core.leader.Fence`)
whether this process still leads; a replica that woke up after losing its Lease is refused (NotLeader) before
anything is sent. Reads are not asked. Without leader election there is no guard. Each process names itself in
its User-Agent (`finetune-operator/<identity>`), so the API server's audit log tells replicas apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.api.ownership import controlled_by, describe_controller
from finetune_operator.core.errors import Conflict, NameTaken, PermanentError, TemporaryError
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
    "ReplicaSet": "replicasets",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
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


def manifest_controller(manifest: Manifest) -> str:
    """The uid of the controller ownerReference a manifest sets ("" when it sets none: a Lease, an Event)."""
    refs = manifest["metadata"].get("ownerReferences") or []
    return next((str(r["uid"]) for r in refs if r.get("controller") is True), "")


def name_taken(body: dict[str, Any], what: str) -> NameTaken:
    meta = body.get("metadata") or {}
    return NameTaken(
        f"{what} {meta.get('namespace')}/{meta.get('name')} exists and is not ours (controlled by "
        f"{describe_controller(body)}): the operator does not adopt or overwrite it; remove or rename it"
    )


@contextmanager
def _replaced(what: str, *, bound: bool) -> Iterator[None]:
    """A write bound to an object's uid that the API refused because the uid changed (the immutable field
    check answers 422) means the name now holds another object: a Conflict (read again; the next pass sees the
    new object, which is not ours), never a PermanentError that would fail the owner."""
    try:
        yield
    except PermanentError as error:
        if bound and "uid" in str(error).lower():
            raise Conflict(f"{what} was replaced since it was read: {error}", delay=1) from error
        raise


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

    def __init__(self, api_client: Any, guard: Callable[[str], None] | None = None) -> None:
        """`guard(what)` is called before every write and raises to refuse it (the leader election's Fence);
        None: writes are never refused here (a single replica without election, tests, the elector's own
        client, which must write its Lease to renew)."""
        self.api = api_client
        self.guard = guard

    @classmethod
    def from_environment(
        cls, pool_size: int = 8, identity: str = "", guard: Callable[[str], None] | None = None
    ) -> Kube:
        """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config. `identity` (the
        leader election's) goes into the User-Agent."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            configuration = client.Configuration.get_default_copy()
        except config.ConfigException:
            configuration = client.Configuration()
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = pool_size
        api = client.ApiClient(configuration)
        api.user_agent = f"{FIELD_MANAGER}/{identity}" if identity else FIELD_MANAGER
        return cls(api, guard)

    def _fence(self, what: str) -> None:
        """Refuse a write when this process no longer leads (see the module docstring)."""
        if self.guard is not None:
            self.guard(what)

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

    def get_metadata(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """An object's metadata only (PartialObjectMetadata: never a Secret's data); None when absent."""
        with self._errors("get", f"{kind} {namespace}/{name}", ok=(404,)) as seen:
            found: dict[str, Any] = self._call("GET", path(api_version, kind, namespace, name), accept=METADATA_ONLY)
        return None if seen else found

    def create(self, manifest: Manifest) -> dict[str, Any] | None:
        """Create; None when it already exists and is ours (another reconcile or a previous operator made it:
        the same controller ownerReference). NameTaken when the name is held by an object someone else controls."""
        meta = manifest["metadata"]
        what = f"{manifest['kind']} {meta['namespace']}/{meta['name']}"
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        self._fence(f"create {what}")
        with (
            self._errors("create", what, ok=(409,)) as seen,
            CHILD_CREATE_SECONDS.labels(manifest["kind"]).time(),
        ):
            created: dict[str, Any] = self._call("POST", url, manifest, query=[("fieldManager", FIELD_MANAGER)])
        if not seen:
            return created
        owner = manifest_controller(manifest)
        if owner:
            existing = self.get_metadata(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
            if existing is not None and not controlled_by(existing, meta["namespace"], owner):
                raise name_taken(existing, manifest["kind"])
        return None

    def replace_owned(self, manifest: Manifest) -> dict[str, Any]:
        """PUT a whole object over the existing one the manifest's own controller controls, bound to that object's
        uid and resourceVersion (an object re-made or changed under the name since it was read is refused: a
        Conflict, read again), never over another owner's (NameTaken). Used to put an operator-made Role back to
        its current rules (builders.rbac: a trainer Role an older operator made)."""
        meta = manifest["metadata"]
        what = f"{manifest['kind']} {meta['namespace']}/{meta['name']}"
        owner = manifest_controller(manifest)
        existing = self.get_metadata(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        if existing is None:
            raise Conflict(f"{what} is gone since it was read", delay=0.5)
        if not owner or not controlled_by(existing, meta["namespace"], owner):
            raise name_taken(existing, manifest["kind"])
        found = existing["metadata"]
        body = {**manifest, "metadata": {**meta, "uid": found["uid"], "resourceVersion": found["resourceVersion"]}}
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        self._fence(f"update {what}")
        with _replaced(what, bound=True), self._errors("update", what):
            replaced: dict[str, Any] = self._call("PUT", url, body, query=[("fieldManager", FIELD_MANAGER)])
        return replaced

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply as the operator's field manager (creates or converges), only over an object the
        manifest's own controller controls: an existing object of another owner (or of none) raises NameTaken
        instead of being taken over, and the apply over our own object carries its uid (a precondition: an
        object deleted and re-made under the name since it was read is refused, not overwritten). Force (taking
        fields from other managers, e.g. a hand edit) is used only over that verified object of ours."""
        meta = manifest["metadata"]
        what = f"{manifest['kind']} {meta['namespace']}/{meta['name']}"
        owner = manifest_controller(manifest)
        if not owner:
            raise ValueError(f"{what}: a child manifest without a controller ownerReference")
        existing = self.get_metadata(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        body, force = manifest, "false"
        if existing is not None:
            if not controlled_by(existing, meta["namespace"], owner):
                raise name_taken(existing, manifest["kind"])
            body = {**manifest, "metadata": {**meta, "uid": existing["metadata"]["uid"]}}
            force = "true"
        self._fence(f"apply {what}")
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        with (
            _replaced(what, bound=existing is not None),
            self._errors("apply", what),
            CHILD_CREATE_SECONDS.labels(manifest["kind"]).time(),
        ):
            applied: dict[str, Any] = self._call(
                "PATCH",
                url,
                body,
                content_type="application/apply-patch+yaml",
                query=[("fieldManager", FIELD_MANAGER), ("force", force)],
            )
        return applied

    def replace(self, manifest: Manifest) -> dict[str, Any]:
        """PUT the whole object; with `metadata.resourceVersion` set, a concurrent writer makes it a Conflict
        (the leader election's compare-and-swap on its Lease)."""
        meta = manifest["metadata"]
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        self._fence(f"update {manifest['kind']} {meta['namespace']}/{meta['name']}")
        with self._errors("update", f"{manifest['kind']} {meta['namespace']}/{meta['name']}"):
            replaced: dict[str, Any] = self._call("PUT", url, manifest, query=[("fieldManager", FIELD_MANAGER)])
        return replaced

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        *,
        owner: str,
        uid: str = "",
        foreground: bool = False,
    ) -> bool:
        """Delete the object of that name if it is a child of `owner` (a uid); False when it was already gone
        or is not ours. `uid`: the object's own uid as the caller observed it (a Job in the store); without it
        the object's metadata is read first and its controller checked. Either way the request carries a uid
        precondition, so an object re-made under the name by someone else is never deleted.
        Background: the object goes at once and its dependents follow. Foreground: the object stays, marked
        deleting, until its dependents (a Job's pods) are gone."""
        self._fence(f"delete {kind} {namespace}/{name}")
        if not uid:
            existing = self.get_metadata(api_version, kind, namespace, name)
            if existing is None:
                return False
            if not controlled_by(existing, namespace, owner):
                log.warning("not deleting %s %s/%s: %s", kind, namespace, name, describe_controller(existing))
                return False
            uid = str(existing["metadata"]["uid"])
        policy = "Foreground" if foreground else "Background"
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": policy,
            "preconditions": {"uid": uid},
        }
        # 409: the precondition failed (the name now holds another object); ours is gone: the goal is met
        with self._errors("delete", f"{kind} {namespace}/{name}", ok=(404, 409)) as seen:
            self._call("DELETE", path(api_version, kind, namespace, name), body)
        return not seen

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self._fence(f"patch Job {namespace}/{name}")
        with self._errors("patch", f"Job {namespace}/{name}", ok=(404,)):
            self._call(
                "PATCH",
                path("batch/v1", "Job", namespace, name),
                {"spec": {"suspend": suspend}},
                content_type="application/merge-patch+json",
            )

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        body: dict[str, Any],
        *,
        uid: str = "",
        resource_version: str = "",
    ) -> bool:
        """A JSON merge patch (e.g. dropping a gone pod's key from a ModelServer's report ConfigMap); False
        when the object is gone. `uid` and `resource_version` are preconditions: the patch applies only to that
        very object (the API server refuses a changed uid) at that version (else Conflict: read again)."""
        meta: dict[str, Any] = {**(body.get("metadata") or {})}
        if uid:
            meta["uid"] = uid
        if resource_version:
            meta["resourceVersion"] = resource_version
        patch = {**body, "metadata": meta} if meta else body
        what = f"{kind} {namespace}/{name}"
        self._fence(f"patch {what}")
        with _replaced(what, bound=bool(uid)), self._errors("patch", what, ok=(404,)) as seen:
            self._call(
                "PATCH",
                path(api_version, kind, namespace, name),
                patch,
                content_type="application/merge-patch+json",
                query=[("fieldManager", FIELD_MANAGER)],
            )
        return not seen

    def patch_status(
        self, namespace: str, name: str, status_patch: dict[str, Any], resource_version: str, kind: str = KIND
    ) -> dict[str, Any]:
        """Merge-patch the status subresource (of a FineTuneJob unless `kind` says otherwise), only if the
        object is still at `resource_version`."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status_patch}
        url = path(f"{GROUP}/{VERSION}", kind, namespace, name) + "/status"
        self._fence(f"patch {kind} {namespace}/{name} status")
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
        self._fence(f"post an Event on {kind} {owner.namespace}/{owner.name}")
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
