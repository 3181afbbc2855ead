"""The operator's memory of every ModelServer's own objects (pods, ConfigMaps, Deployment), by the server's uid.

Why: a server's pass reads its replicas' readiness and reports from memory, like the FineTuneJob loop reads its
children (core.store), instead of listing pods and reading ConfigMaps on every pass; only changes go out. Watch
events (handlers, through the registry) fill it; reconcile threads read it, so every access takes one lock. The
server bodies themselves stay in core.store.Store, where the FineTuneJobs naming a server read its verdict.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from finetune_operator.core.store import Key
from finetune_operator.modelserver.observed import ServerChildren, ServerPodObs


def _version(value: str) -> int:
    """A resourceVersion as a number (etcd's are), to tell an older report from a newer one; -1: unknown."""
    try:
        return int(value)
    except ValueError:
        return -1


@dataclass
class _Objects:
    pods: dict[str, ServerPodObs] = field(default_factory=dict)
    config_maps: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    deployment: tuple[int, str] | None = None


class ServerStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {}
        self._objects: dict[str, _Objects] = {}

    def track(self, uid: str, key: Key) -> None:
        """A server's body was seen: its objects' events now queue `key`."""
        with self._lock:
            self._keys[uid] = key

    def forget(self, uid: str) -> None:
        with self._lock:
            self._keys.pop(uid, None)
            self._objects.pop(uid, None)

    def key_of(self, uid: str) -> Key | None:
        with self._lock:
            return self._keys.get(uid)

    def _of(self, uid: str) -> _Objects:
        return self._objects.setdefault(uid, _Objects())

    def put_pod(self, uid: str, pod: ServerPodObs) -> None:
        with self._lock:
            self._of(uid).pods[pod.name] = pod

    def forget_pod(self, uid: str, name: str) -> None:
        with self._lock:
            self._of(uid).pods.pop(name, None)

    def put_config_map(self, uid: str, name: str, version: str, data: dict[str, str]) -> None:
        """File a ConfigMap's data, unless what is filed is newer (a pass files what it wrote; the watch may
        report an older version after it)."""
        with self._lock:
            maps = self._of(uid).config_maps
            if _version(version) >= maps.get(name, (-1, {}))[0]:
                maps[name] = (_version(version), dict(data))

    def forget_config_map(self, uid: str, name: str) -> None:
        with self._lock:
            self._of(uid).config_maps.pop(name, None)

    def put_deployment(self, uid: str, version: str, spec_hash: str) -> None:
        """File the bundle hash the Deployment carries, unless what is filed is newer."""
        with self._lock:
            objects = self._of(uid)
            if objects.deployment is None or _version(version) >= objects.deployment[0]:
                objects.deployment = (_version(version), spec_hash)

    def forget_deployment(self, uid: str) -> None:
        with self._lock:
            self._of(uid).deployment = None

    def children(self, uid: str) -> ServerChildren:
        with self._lock:
            objects = self._objects.get(uid, _Objects())
            config_maps = {name: dict(data) for name, (_, data) in objects.config_maps.items()}
            spec_hash = objects.deployment[1] if objects.deployment is not None else None
            return ServerChildren(tuple(objects.pods.values()), config_maps, spec_hash)
