"""How the ModelServer loop registers (core.registry): its kind, its loop, and what it watches.

Server bodies fill core.store.Store (where the FineTuneJobs naming a server read its verdict) and queue
themselves; a FineTuneJob's change queues the server it names (its desired adapters may change: published,
deleted, serving off); the server's own pods (readiness), ReplicaSets (which Deployment a pod's ReplicaSet
belongs to), ConfigMaps (the desired list, the replicas' report) and Deployment (the bundle hash) are streamed by
the server-uid label and filed by their controller ownerReference (store.py, api.ownership), and queue the server
they belong to. At each resync the memory prunes what names no live server.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.api.modelserver import SERVER_KIND, SERVER_PLURAL, reference_of
from finetune_operator.builders.modelserver import COMPONENT, LABEL_SERVER_UID
from finetune_operator.core.registry import (
    CONFIG_MAPS,
    DELETED,
    DEPLOYMENTS,
    PODS,
    REPLICA_SETS,
    Controller,
    Resource,
    Watch,
)
from finetune_operator.core.store import Key
from finetune_operator.modelserver.controller import ServerReconciler
from finetune_operator.modelserver.observed import config_map_data, deployment_hash, owned, server_pod_obs

MODELSERVERS = Resource(GROUP, VERSION, SERVER_PLURAL, SERVER_KIND)
FINETUNEJOBS = Resource(GROUP, VERSION, PLURAL, KIND)


def _server_body(loop: ServerReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if event == DELETED:
        loop.store.forget_server(*key)
        loop.servers.forget(meta["namespace"], meta["uid"])
        loop.accepted.forget(meta["uid"])
        return []
    loop.servers.track(meta["uid"], loop.store.put_server(body))
    return [key]


def _job_body(_loop: ServerReconciler, _event: str, body: dict[str, Any]) -> list[Key]:
    server = reference_of(body)
    return [server] if server is not None else []


def _queued(key: Key | None) -> list[Key]:
    return [key] if key is not None else []


def _pod(loop: ServerReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    pod = server_pod_obs(body)
    return _queued(loop.servers.forget_pod(pod) if event == DELETED else loop.servers.put_pod(pod))


def _replica_set(loop: ServerReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    replica_set = owned(body, "Deployment", "apps")
    if event == DELETED:
        return _queued(loop.servers.forget_replica_set(replica_set))
    return _queued(loop.servers.put_replica_set(replica_set))


def _config_map(loop: ServerReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    meta, config_map = body["metadata"], owned(body)
    if event == DELETED:
        return _queued(loop.servers.forget_config_map(config_map, meta["name"]))
    version = str(meta.get("resourceVersion", ""))
    return _queued(loop.servers.put_config_map(config_map, meta["name"], version, config_map_data(body)))


def _deployment(loop: ServerReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    deployment = owned(body)
    if event == DELETED:
        return _queued(loop.servers.forget_deployment(deployment))
    version = str(body["metadata"].get("resourceVersion", ""))
    return _queued(loop.servers.put_deployment(deployment, version, deployment_hash(body)))


CONTROLLER: Controller[ServerReconciler] = Controller(
    kind=SERVER_KIND,
    resource=MODELSERVERS,
    build=ServerReconciler,
    reconcile=ServerReconciler.reconcile,
    keys=lambda loop: loop.store.server_keys(),
    concurrency=lambda _settings: 2,
    prune=ServerReconciler.prune,
    watches=(
        Watch(MODELSERVERS, _server_body),
        Watch(FINETUNEJOBS, _job_body),
        Watch(PODS, _pod, owner_label=LABEL_SERVER_UID, components=(COMPONENT,)),
        # a replica is a pod of a ReplicaSet the server's own Deployment controls (api.ownership)
        Watch(REPLICA_SETS, _replica_set, owner_label=LABEL_SERVER_UID, components=(COMPONENT,)),
        Watch(CONFIG_MAPS, _config_map, owner_label=LABEL_SERVER_UID, components=(COMPONENT,)),
        Watch(DEPLOYMENTS, _deployment, owner_label=LABEL_SERVER_UID, components=(COMPONENT,)),
    ),
)
