"""The operator's memory of every ModelServer's own objects (pods, ReplicaSets, ConfigMaps, Deployment).

Why: a server's pass reads its replicas' readiness and reports from memory, like the FineTuneJob loop reads its
children (core.store), instead of listing pods and reading ConfigMaps on every pass; only changes go out. Watch
events (handlers, through the registry) fill it; reconcile threads read it, so every access takes one lock. The
server bodies themselves stay in core.store.Store, where the FineTuneJobs naming a server read its verdict.

Ownership (api.ownership): labels only choose what the watches stream. A ConfigMap or Deployment is filed under
(its namespace, its controller ModelServer's uid), a ReplicaSet under (its namespace, its uid) with its controller
Deployment's uid, a pod under (its namespace, its controller ReplicaSet's uid). A server's children are the
objects filed under its own namespace and uid, and its replicas only the pods of ReplicaSets that its own
Deployment controls: a pod or ConfigMap that merely carries its labels, or sits in another namespace, is never
part of it. Entries go with their server (`forget`), and `prune` (at each resync) drops what names no live owner,
so memory is bounded by the live servers and their objects.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from finetune_operator.core.store import Key
from finetune_operator.modelserver.observed import Owned, ServerChildren, ServerPodObs

OwnerKey = tuple[str, str]  # (namespace, uid): where an object is filed


def _version(value: str) -> int:
    """A resourceVersion as a number (etcd's are), to tell an older report from a newer one; -1: unknown."""
    try:
        return int(value)
    except ValueError:
        return -1


@dataclass(frozen=True)
class _Deployment:
    version: int
    spec_hash: str
    uid: str


@dataclass
class _Objects:
    config_maps: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    deployment: _Deployment | None = None


class ServerStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {}  # server uid -> (namespace, name)
        self._objects: dict[OwnerKey, _Objects] = {}  # by (namespace, server uid)
        self._replica_sets: dict[OwnerKey, str] = {}  # (namespace, ReplicaSet uid) -> its Deployment's uid
        self._pods: dict[OwnerKey, dict[str, ServerPodObs]] = {}  # by (namespace, ReplicaSet uid)
        self._orphans: set[tuple[str, OwnerKey]] = set()  # what the last prune found owner-less

    def track(self, uid: str, key: Key) -> None:
        """A server's body was seen: its objects' events now queue `key`."""
        with self._lock:
            self._keys[uid] = key

    def forget(self, namespace: str, uid: str) -> None:
        """The server is gone: its objects with it (its ReplicaSets and pods at the next prunes)."""
        with self._lock:
            self._keys.pop(uid, None)
            self._objects.pop((namespace, uid), None)

    def key_of(self, uid: str) -> Key | None:
        with self._lock:
            return self._keys.get(uid)

    def _owner(self, namespace: str, uid: str) -> Key | None:
        key = self._keys.get(uid)
        return key if key is not None and key[0] == namespace else None

    def owner_key(self, namespace: str, uid: str) -> Key | None:
        """The server with this uid, if it lives in `namespace` (an object's event queues only its own owner)."""
        with self._lock:
            return self._owner(namespace, uid)

    def _server_of_deployment(self, namespace: str, deployment_uid: str) -> Key | None:
        for (ns, uid), objects in self._objects.items():
            if ns == namespace and objects.deployment is not None and objects.deployment.uid == deployment_uid:
                return self._owner(ns, uid)
        return None

    def _server_of_replica_set(self, namespace: str, replica_set_uid: str) -> Key | None:
        deployment = self._replica_sets.get((namespace, replica_set_uid))
        return self._server_of_deployment(namespace, deployment) if deployment else None

    def put_pod(self, pod: ServerPodObs) -> Key | None:
        """File a pod under its controller ReplicaSet (whether that one counts is decided when `children` is
        read); the server it is a replica of, when known (to queue it)."""
        if not pod.replica_set:
            return None
        with self._lock:
            self._pods.setdefault((pod.namespace, pod.replica_set), {})[pod.name] = pod
            return self._server_of_replica_set(pod.namespace, pod.replica_set)

    def forget_pod(self, pod: ServerPodObs) -> Key | None:
        with self._lock:
            pods = self._pods.get((pod.namespace, pod.replica_set))
            if pods is not None:
                pods.pop(pod.name, None)
                if not pods:
                    self._pods.pop((pod.namespace, pod.replica_set), None)
            return self._server_of_replica_set(pod.namespace, pod.replica_set)

    def put_replica_set(self, replica_set: Owned) -> Key | None:
        """File a ReplicaSet with its controller Deployment; the server whose Deployment that is, when known."""
        if not replica_set.controller:
            return None
        with self._lock:
            self._replica_sets[(replica_set.namespace, replica_set.uid)] = replica_set.controller
            return self._server_of_deployment(replica_set.namespace, replica_set.controller)

    def forget_replica_set(self, replica_set: Owned) -> Key | None:
        with self._lock:
            self._replica_sets.pop((replica_set.namespace, replica_set.uid), None)
            self._pods.pop((replica_set.namespace, replica_set.uid), None)
            return self._server_of_deployment(replica_set.namespace, replica_set.controller)

    def put_config_map(self, config_map: Owned, name: str, version: str, data: dict[str, str]) -> Key | None:
        """File a ConfigMap's data under its controller server, unless what is filed is newer (a pass files what
        it wrote; the watch may report an older version after it). The server, when known."""
        if not config_map.controller:
            return None
        with self._lock:
            maps = self._objects.setdefault((config_map.namespace, config_map.controller), _Objects()).config_maps
            if _version(version) >= maps.get(name, (-1, {}))[0]:
                maps[name] = (_version(version), dict(data))
            return self._owner(config_map.namespace, config_map.controller)

    def forget_config_map(self, config_map: Owned, name: str) -> Key | None:
        with self._lock:
            objects = self._objects.get((config_map.namespace, config_map.controller))
            if objects is not None:
                objects.config_maps.pop(name, None)
            return self._owner(config_map.namespace, config_map.controller)

    def put_deployment(self, deployment: Owned, version: str, spec_hash: str) -> Key | None:
        """File the bundle hash the server's Deployment carries, unless what is filed is newer."""
        if not deployment.controller:
            return None
        with self._lock:
            objects = self._objects.setdefault((deployment.namespace, deployment.controller), _Objects())
            if objects.deployment is None or _version(version) >= objects.deployment.version:
                objects.deployment = _Deployment(_version(version), spec_hash, deployment.uid)
            return self._owner(deployment.namespace, deployment.controller)

    def forget_deployment(self, deployment: Owned) -> Key | None:
        """The server's Deployment is gone (only the one with that uid: a watch event names which)."""
        with self._lock:
            objects = self._objects.get((deployment.namespace, deployment.controller))
            if objects is not None and objects.deployment is not None and objects.deployment.uid == deployment.uid:
                objects.deployment = None
            return self._owner(deployment.namespace, deployment.controller)

    def children(self, namespace: str, uid: str) -> ServerChildren:
        """The server's own objects: those filed under its namespace and uid, and the pods of the ReplicaSets its
        Deployment controls."""
        with self._lock:
            objects = self._objects.get((namespace, uid), _Objects())
            config_maps = {name: dict(data) for name, (_, data) in objects.config_maps.items()}
            deployment = objects.deployment
            if deployment is None:
                return ServerChildren((), config_maps, None)
            sets = [rs for (ns, rs), owner in self._replica_sets.items() if ns == namespace and owner == deployment.uid]
            pods = tuple(p for rs in sets for p in self._pods.get((namespace, rs), {}).values())
            return ServerChildren(pods, config_maps, deployment.spec_hash)

    def prune(self) -> int:
        """Drop what names no live owner: objects filed under a (namespace, uid) no tracked server has,
        ReplicaSets whose Deployment is no live server's, pods of ReplicaSets not kept. A group goes at the second
        prune that finds it owner-less (one resync period of grace: an object's event may come before its
        owner's). How many went."""
        with self._lock:
            live = {(key[0], uid) for uid, key in self._keys.items()}
            deployments = {
                (ns, objects.deployment.uid)
                for (ns, uid), objects in self._objects.items()
                if (ns, uid) in live and objects.deployment is not None
            }
            sets = {k for k, owner in self._replica_sets.items() if (k[0], owner) in deployments}
            found = {("objects", k) for k in self._objects if k not in live}
            found |= {("replica_sets", k) for k in self._replica_sets if k not in sets}
            found |= {("pods", k) for k in self._pods if k not in sets}
            drop, self._orphans = found & self._orphans, found - self._orphans
            for kind, key in drop:
                if kind == "objects":
                    self._objects.pop(key, None)
                elif kind == "replica_sets":
                    self._replica_sets.pop(key, None)
                else:
                    self._pods.pop(key, None)
            return len(drop)

    def sizes(self) -> tuple[int, int, int]:
        """How many object groups, ReplicaSets and pod groups are held (for tests of the bound)."""
        with self._lock:
            return len(self._objects), len(self._replica_sets), len(self._pods)
