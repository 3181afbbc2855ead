"""Authentication: the bearer token is a Kubernetes token, checked with a TokenReview; the caller then acts
through a client impersonating the identity the review returned.

Why TokenReview: any token the cluster accepts (a ServiceAccount token from `kubectl create token`, an OIDC
token the API server is configured for) works, and the service never sees a password or keeps a user table.
The namespace is OpenAI's project (the `OpenAI-Project` header the official client sends for `project=`), or
the token's own ServiceAccount namespace; a user that is not a ServiceAccount must name one. Nothing is cached
between requests: a revoked token or a removed RoleBinding takes effect at the next request.

`authorize` asks a SubjectAccessReview whether the caller may act on finetunejobs.finetune.dev in the
namespace, before a route touches anything, so a caller without fine-tuning rights gets 403 and nothing is
created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from anyio import to_thread
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from finetune_trainer.finetuning_api.caller import Caller
from finetune_trainer.finetuning_api.errors import ApiError
from finetune_trainer.finetuning_api.file_store import DNS_LABEL
from finetune_trainer.finetuning_api.kube import Kube

log = logging.getLogger(__name__)

PROJECT_HEADER = "openai-project"
SA_PREFIX = "system:serviceaccount:"
GROUP = "finetune.dev"
RESOURCE = "finetunejobs"


def namespace_for(username: str, project: str | None) -> str:
    """The namespace a request acts in: the project header, else the ServiceAccount's own namespace."""
    if project:
        if not DNS_LABEL.match(project):
            raise ApiError(
                400,
                f"OpenAI-Project {project!r} is not a namespace name: set project= to the Kubernetes namespace",
                param="project",
            )
        return project
    if username.startswith(SA_PREFIX):
        namespace = username[len(SA_PREFIX) :].split(":", 1)[0]
        if DNS_LABEL.match(namespace):
            return namespace
    raise ApiError(
        400,
        f"{username!r} is not a ServiceAccount, so the namespace cannot be taken from the token: send the "
        "OpenAI-Project header (OpenAI(project='<namespace>'))",
        param="project",
    )


def review_token(service: Any, token: str) -> tuple[str, tuple[str, ...], str]:
    """TokenReview with the service's own client: (username, groups, uid), or ApiError 401."""
    from kubernetes import client

    api = client.AuthenticationV1Api(service)
    review = api.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
    status = review.status
    if not status or not status.authenticated or not status.user or not status.user.username:
        raise ApiError(
            401, "Incorrect API key provided: the token is not one this cluster accepts", code="invalid_api_key"
        )
    user = status.user
    return str(user.username), tuple(user.groups or ()), str(user.uid or "")


def authorize(service: Any, caller: Caller, verb: str, resource: str = RESOURCE, group: str = GROUP) -> None:
    """SubjectAccessReview, made with the service's own client (`Kube.service`): may the caller `verb`
    `resource` in its namespace? Otherwise ApiError 403."""
    from kubernetes import client

    api = client.AuthorizationV1Api(service)
    review = api.create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=caller.username,
                groups=list(caller.groups),
                uid=caller.uid or None,
                resource_attributes=client.V1ResourceAttributes(
                    namespace=caller.namespace, verb=verb, group=group, resource=resource
                ),
            )
        )
    )
    if not review.status or not review.status.allowed:
        raise ApiError(
            403,
            f"{caller.username} may not {verb} {resource}.{group} in namespace {caller.namespace}: "
            "ask for a Role granting it (docs/openai-api.md)",
            code="permission_denied",
        )


class AuthMiddleware:
    """ASGI middleware on `/v1/*`: authenticate, put a `Caller` on the request (`caller_of`), or answer 401/400."""

    def __init__(self, app: ASGIApp, kube: Callable[[], Kube]) -> None:
        self.app = app
        self.kube = kube

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            caller = await self._caller(headers)
        except ApiError as error:
            await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    async def _caller(self, headers: dict[str, str]) -> Caller:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "You didn't provide an API key: send a Kubernetes token as 'Authorization: Bearer <token>' "
                "(kubectl create token <serviceaccount>)",
                code="invalid_api_key",
            )
        kube = await in_thread(self.kube)
        username, groups, uid = await in_thread(lambda: review_token(kube.service, token))
        namespace = namespace_for(username, headers.get(PROJECT_HEADER, "").strip() or None)
        return Caller(
            username=username,
            groups=groups,
            uid=uid,
            namespace=namespace,
            api_client=kube.acting_as(username, groups),
        )


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking Kubernetes call off the event loop; an API failure becomes a 503 naming it."""
    from kubernetes.client.exceptions import ApiException

    try:
        return await to_thread.run_sync(fn)
    except ApiException as error:
        log.warning("kubernetes call failed: %s %s", error.status, error.reason)
        raise ApiError(503, f"the Kubernetes API answered {error.status} {error.reason}: try again") from error
