"""Who is calling: the identity a TokenReview of the bearer token returned, the namespace the request acts in,
and a Kubernetes client that impersonates that identity.

Why one small shared type: the files, jobs and models routes all act as the caller and never as the service's
own ServiceAccount (which holds only TokenReview, SubjectAccessReview and impersonation), so each route takes a
`Caller` from the request (`caller_of`) and uses its `api_client`; the authentication middleware (auth.py) is
the only place that makes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. `namespace` is OpenAI's project (the `OpenAI-Project` header) or, without one,
    the namespace of the caller's ServiceAccount; `api_client` is a kubernetes.client.ApiClient whose every
    request carries Impersonate-User/Impersonate-Group for this identity."""

    username: str
    groups: tuple[str, ...]
    uid: str
    namespace: str
    api_client: Any  # kubernetes.client.ApiClient (typed Any: the kubernetes package has no type hints)


def caller_of(request: Request) -> Caller:
    """The caller the authentication middleware put on the request (every /v1 route is behind it)."""
    caller = getattr(request.state, "caller", None)
    if not isinstance(caller, Caller):
        raise RuntimeError("route reached without authentication: the middleware must run first")
    return caller
