"""FineTuneJobs, their Events and their endpoints' key Secrets, read and written AS THE CALLER.

Why one small module: every Kubernetes call the jobs, models and inference routes make goes through the
caller's impersonating client (`Caller.api_client`), so the API server's RBAC decides each one exactly as for
kubectl, and the Kubernetes answers become OpenAI-shaped errors in one place: 403 -> 403, 404 -> 404 (a job of
another namespace is never looked up: ids are names in the caller's namespace), 422 (the CRD's admission
rules) -> 400 with the API server's message. Blocking calls; the routes run them off the event loop.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from finetune_trainer.finetuning_api import jobs
from finetune_trainer.finetuning_api.caller import Caller
from finetune_trainer.finetuning_api.errors import ApiError, not_found
from finetune_trainer.finetuning_api.job_view import is_api_job

log = logging.getLogger(__name__)
KEY_FIELD = "apiKey"
"""The key of an endpoint's API key Secret (docs/finetunejob.md, Serving)."""


@contextmanager
def kube_errors(caller: Caller, action: str, what: str = "fine-tuning job", ident: str = "") -> Iterator[None]:
    """Turn the API server's refusals into OpenAI's answers, naming what the caller may not do."""
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as error:
        status = int(error.status or 0)
        if status == 403:
            raise ApiError(
                403,
                f"{caller.username} may not {action} in namespace {caller.namespace} (Kubernetes RBAC): ask for a "
                "Role granting it (docs/openai-api.md)",
                code="permission_denied",
            ) from None
        if status == 404:
            raise not_found(what, ident) from None
        if status == 409:
            raise ApiError(409, f"the {what} changed meanwhile: try again", code="conflict") from None
        if status in (400, 422):
            raise ApiError(
                400, f"the Kubernetes API refused the {what}: {_message(error)}", code="invalid_value"
            ) from None
        log.warning("kubernetes %s failed: %s %s", action, status, error.reason)
        raise ApiError(503, f"the Kubernetes API answered {status} {error.reason}: try again") from None


def _message(error: Any) -> str:
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError):
        return str(error.reason)


def _custom(caller: Caller) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(caller.api_client)


def create_job(caller: Caller, manifest: Mapping[str, Any]) -> dict[str, Any]:
    with kube_errors(caller, "create finetunejobs.finetune.dev"):
        created = _custom(caller).create_namespaced_custom_object(
            jobs.GROUP, jobs.VERSION, caller.namespace, jobs.PLURAL, dict(manifest)
        )
    return dict(created)


def get_job(caller: Caller, name: str) -> dict[str, Any]:
    """An API-made job of the caller's namespace; any other name (a kubectl-made FineTuneJob too) is 404."""
    if not jobs.JOB_NAME.match(name):
        raise not_found("fine-tuning job", name, param="fine_tuning_job_id")
    with kube_errors(caller, "get finetunejobs.finetune.dev", ident=name):
        obj = dict(_custom(caller).get_namespaced_custom_object(jobs.GROUP, jobs.VERSION, caller.namespace,
                                                                jobs.PLURAL, name))  # fmt: skip
    if not is_api_job(obj):
        raise not_found("fine-tuning job", name, param="fine_tuning_job_id")
    return obj


def list_jobs(caller: Caller) -> list[dict[str, Any]]:
    """Every API-made job of the caller's namespace (the label selects them on the server).

    The body is decoded with `json.loads` rather than the client's own deserializer, which walks every value of
    the list in Python: with 1,000 jobs (3.7 MB) that was 0.6-1.1 s of a list request against 0.07-0.2 s for
    the request itself (measured on the project's 2-core machine)."""
    with kube_errors(caller, "list finetunejobs.finetune.dev"):
        response = _custom(caller).list_namespaced_custom_object(
            jobs.GROUP,
            jobs.VERSION,
            caller.namespace,
            jobs.PLURAL,
            label_selector=f"{jobs.API_LABEL}={jobs.API_LABEL_VALUE}",
            _preload_content=False,
        )
        listed = json.loads(response.data)
    return [dict(item) for item in listed.get("items") or []]


def patch_job(caller: Caller, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch, guarded by the object's resourceVersion (a concurrent change answers 409 -> retry)."""
    meta = obj.get("metadata") or {}
    body = {**patch, "metadata": {**dict(patch.get("metadata") or {}), "resourceVersion": meta.get("resourceVersion")}}
    with kube_errors(caller, "patch finetunejobs.finetune.dev", ident=str(meta.get("name"))):
        patched = _custom(caller).patch_namespaced_custom_object(
            jobs.GROUP, jobs.VERSION, caller.namespace, jobs.PLURAL, str(meta.get("name")), body
        )
    return dict(patched)


def update_with_retry(
    caller: Caller, name: str, change: Callable[[dict[str, Any]], Mapping[str, Any]], attempts: int = 5
) -> dict[str, Any]:
    """Read, decide the patch from what was read (`change` may refuse with ApiError), patch; read and decide
    again when the object changed in between (409), so a decision is never made on a stale object."""
    for attempt in range(attempts):
        obj = get_job(caller, name)
        try:
            return patch_job(caller, obj, change(obj))
        except ApiError as error:
            if error.status != 409 or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def job_events(caller: Caller, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Kubernetes Events on the job. A caller whose RBAC does not allow listing Events gets none (the
    status still gives the job's events): Events are optional detail, not a reason to refuse."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    meta = obj.get("metadata") or {}
    selector = f"involvedObject.kind=FineTuneJob,involvedObject.name={meta.get('name')}"
    try:
        listed = client.CoreV1Api(caller.api_client).list_namespaced_event(caller.namespace, field_selector=selector)
    except ApiException as error:
        if error.status == 403:
            return []
        with kube_errors(caller, "list events"):
            raise
    items = caller.api_client.sanitize_for_serialization(listed).get("items") or []
    return [dict(item) for item in items]


def endpoint_key(caller: Caller, obj: Mapping[str, Any]) -> str | None:
    """The key of the job's endpoint, read as the caller from the Secret status.serving names (None: the
    endpoint is open, `serving.allowUnauthenticated`)."""
    from kubernetes import client

    secret_name = ((obj.get("status") or {}).get("serving") or {}).get("apiKeySecret")
    if not secret_name:
        if ((obj.get("spec") or {}).get("serving") or {}).get("allowUnauthenticated"):
            return None
        raise ApiError(503, "the model's endpoint has no API key Secret yet: try again shortly", code="model_not_ready")
    with kube_errors(caller, f"get Secret {secret_name}", what="API key Secret", ident=str(secret_name)):
        secret = client.CoreV1Api(caller.api_client).read_namespaced_secret(str(secret_name), caller.namespace)
    value = (secret.data or {}).get(KEY_FIELD)
    if not value:
        raise ApiError(503, f"Secret {secret_name} has no {KEY_FIELD}: the endpoint cannot be called")
    return base64.b64decode(value).decode()
