"""How the ModelServer loop registers (core.registry): its kind, its loop, and what it watches.

Server bodies fill core.store.Store (where the FineTuneJobs naming a server read its verdict) and queue
themselves; a FineTuneJob's change queues the server it names (its desired adapters may change: published,
deleted, serving off); the server's own pods (readiness), ConfigMaps (the desired list, the replicas' report) and
Deployment (the bundle hash) are filed under its uid (label finetune.dev/server-uid) and queue it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.api.modelserver import SERVER_KIND, SERVER_PLURAL, reference_of
from finetune_operator.builders.modelserver import COMPONENT, LABEL_SERVER_UID
from finetune_operator.core.registry import (
    CONFIG_MAPS,
    DELETED,
    DEPLOYMENTS,
    PODS,
    Controller,
    Resource,
    Watch,
)
from finetune_operator.core.store import Key
from finetune_operator.modelserver.controller import ServerReconciler
from finetune_operator.modelserver.observed import config_map_data, deployment_hash, server_pod_obs

MODELSERVERS = Resource(GROUP, VERSION, SERVER_PLURAL, SERVER_KIND)
FINETUNEJOBS = Resource(GROUP, VERSION, PLURAL, KIND)

Observe = Callable[[ServerReconciler, str, dict[str, Any]], list[Key]]


def _server_body(loop: ServerReconciler, event: str, body: dict[str, Any]) -> list[Key]:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if event == DELETED:
        loop.store.forget_server(*key)
        loop.servers.forget(meta["uid"])
        return []
    loop.servers.track(meta["uid"], loop.store.put_server(body))
    return [key]


def _job_body(_loop: ServerReconciler, _event: str, body: dict[str, Any]) -> list[Key]:
    server = reference_of(body)
    return [server] if server is not None else []


def _child(file: Callable[[ServerReconciler, str, str, dict[str, Any]], None]) -> Observe:
    """A server object's event (`file(loop, uid, event, body)`): filed under its server's uid, which is queued."""

    def observe(loop: ServerReconciler, event: str, body: dict[str, Any]) -> list[Key]:
        uid = body["metadata"]["labels"][LABEL_SERVER_UID]
        file(loop, uid, event, body)
        key = loop.servers.key_of(uid)
        return [key] if key is not None else []

    return observe


def _pod(loop: ServerReconciler, uid: str, event: str, body: dict[str, Any]) -> None:
    if event == DELETED:
        loop.servers.forget_pod(uid, body["metadata"]["name"])
    else:
        loop.servers.put_pod(uid, server_pod_obs(body))


def _config_map(loop: ServerReconciler, uid: str, event: str, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    if event == DELETED:
        loop.servers.forget_config_map(uid, meta["name"])
    else:
        loop.servers.put_config_map(uid, meta["name"], str(meta.get("resourceVersion", "")), config_map_data(body))


def _deployment(loop: ServerReconciler, uid: str, event: str, body: dict[str, Any]) -> None:
    if event == DELETED:
        loop.servers.forget_deployment(uid)
    else:
        version = str(body["metadata"].get("resourceVersion", ""))
        loop.servers.put_deployment(uid, version, deployment_hash(body))


CONTROLLER: Controller[ServerReconciler] = Controller(
    kind=SERVER_KIND,
    resource=MODELSERVERS,
    build=ServerReconciler,
    reconcile=ServerReconciler.reconcile,
    keys=lambda loop: loop.store.server_keys(),
    concurrency=lambda _settings: 2,
    watches=(
        Watch(MODELSERVERS, _server_body),
        Watch(FINETUNEJOBS, _job_body),
        Watch(PODS, _child(_pod), owner_label=LABEL_SERVER_UID, components=(COMPONENT,)),
        Watch(CONFIG_MAPS, _child(_config_map), owner_label=LABEL_SERVER_UID, components=(COMPONENT,)),
        Watch(DEPLOYMENTS, _child(_deployment), owner_label=LABEL_SERVER_UID, components=(COMPONENT,)),
    ),
)
