"""The one ownership rule: which objects belong to a FineTuneJob, a FineTuneSweep or a ModelServer.

Why: labels are written by whoever creates an object, in any namespace, and anyone can copy a uid from an
MLflow run's tags; a child chosen by label alone lets another tenant feed a run its metrics or make the
operator delete its Jobs. An object counts as a child only when it is in its owner's namespace and its
controller ownerReference names the owner's uid (Kubernetes' own rule: owner references are namespace-local,
and the garbage collector reads them the same way). Labels still find candidates cheaply (watch selectors,
the store's index); this module alone decides. A pod counts only through a Job that counts (its controller is
that Job's uid), a serving pod only through a ReplicaSet its Deployment controls.

Pure: dicts in, answers out; every loop (core.store, the sweep's store, the ModelServer loop, core.kube's
apply, create and delete) asks here.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import GROUP


def controller_ref(body: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference marked `controller: true` (Kubernetes allows at most one), or None."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, dict) and r.get("controller") is True), None)


def controller_uid(body: dict[str, Any], kind: str, group: str = GROUP) -> str:
    """The uid of the object's controller when that controller is of `kind` in API group `group` ("" for the
    core group); "" when it has none or another kind controls it."""
    ref = controller_ref(body)
    if ref is None:
        return ""
    api_version = str(ref.get("apiVersion") or "")
    ref_group = api_version.rpartition("/")[0] if "/" in api_version else ""
    if ref.get("kind") != kind or ref_group != group:
        return ""
    return str(ref.get("uid") or "")


def controlled_by(body: dict[str, Any], namespace: str, uid: str) -> bool:
    """Whether the object is in `namespace` and its controller ownerReference names `uid` (of any kind: a uid
    names one object)."""
    meta = body.get("metadata") or {}
    ref = controller_ref(body)
    return bool(uid) and meta.get("namespace") == namespace and ref is not None and ref.get("uid") == uid


def describe_controller(body: dict[str, Any]) -> str:
    """Who controls the object, for a message: `Kind/name` or `no controller`."""
    ref = controller_ref(body)
    return f"{ref.get('kind')}/{ref.get('name')}" if ref else "no controller"
