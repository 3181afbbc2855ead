"""Compact observations of a ModelServer's own objects, made from the bodies its watches report (pure).

Why: the server's pass decides from memory (store.py), not from a list and two reads per pass; a few fields per
object keep that memory small. Pods: name, readiness, whether they are going. ConfigMaps: their data (the desired
list and the replicas' reports are small JSON). The Deployment: the bundle hash it carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api.labels import ANNOTATION_SPEC_HASH
from finetune_operator.api.modelserver import SERVER_KIND
from finetune_operator.api.ownership import controller_uid


@dataclass(frozen=True)
class Owned:
    """Where an object of a server is filed: its namespace, its own uid and its controller's uid ("" when no
    object of the expected kind controls it: then it is nobody's, and is not filed)."""

    namespace: str
    uid: str
    controller: str


def owned(body: dict[str, Any], kind: str = SERVER_KIND, group: str | None = None) -> Owned:
    """`body`'s place, its controller read for `kind` (in API group `group`; the operator's own by default)."""
    meta = body.get("metadata") or {}
    controller = controller_uid(body, kind) if group is None else controller_uid(body, kind, group)
    return Owned(str(meta.get("namespace", "")), str(meta.get("uid", "")), controller)


@dataclass(frozen=True)
class ServerPodObs:
    name: str
    ready: bool = False
    deleting: bool = False
    namespace: str = ""
    replica_set: str = (
        ""  # its controller ReplicaSet's uid: a replica only through one its server's Deployment controls
    )


def server_pod_obs(body: dict[str, Any]) -> ServerPodObs:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ServerPodObs(
        name=str(meta.get("name", "")),
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        namespace=str(meta.get("namespace", "")),
        replica_set=controller_uid(body, "ReplicaSet", "apps"),
    )


def config_map_data(body: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (body.get("data") or {}).items()}


def deployment_hash(body: dict[str, Any]) -> str:
    """The bundle hash a server's Deployment carries ("" when it has none)."""
    return str(((body.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH, ""))


@dataclass(frozen=True)
class ServerChildren:
    """What the watches last reported about one server's objects: a consistent copy for one pass."""

    pods: tuple[ServerPodObs, ...] = ()
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    """The data of each of its ConfigMaps that exists, by name."""
    deployment_hash: str | None = None
    """The bundle hash on its Deployment; None: no Deployment."""

    def config_map(self, name: str) -> dict[str, str] | None:
        """The data of ConfigMap `name`; None when it does not exist."""
        return self.config_maps.get(name)
