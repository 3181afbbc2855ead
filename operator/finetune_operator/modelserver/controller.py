"""One level-triggered reconcile pass for one ModelServer: read memory, decide (pure `plan`), act, write status.

The pass reads the server and the FineTuneJobs naming it from core.store.Store, and its pods, ConfigMaps and
Deployment from the ServerStore, all filled by watch events (handlers, through the registry); it asks no question
of the API server. It then creates or applies what the plan says (re-filing what it wrote, so the next pass does
not write it again before the watch reports it), drops the report keys of pods that are gone, and patches the
status once, only when it changed. The FineTuneJobs naming the server re-read its status when the watch reports
the status change, so the verdict is decided here once.

Why no timed requeue any more: the server used to ask again every 3 s while converging and every 30 s after,
because its replicas' readiness and reports (pods, the report ConfigMap) were not watched. They are now, so each
change triggers a pass; the operator's periodic resync (--resync-seconds) backs up a lost event, as it does for
FineTuneJobs. One exception: when an object under one of the server's names belongs to someone else, core.kube
refuses to write it (NameTaken, api.ownership) and the server reports Ready=False, reason NameTaken; that object
is not the server's, so no watch of its objects reports its removal, and the pass is retried on a timer.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from finetune_operator.api import conditions as cond
from finetune_operator.api.modelserver import SERVER_KIND, ModelServerSpec, parse_server_spec, reference_of
from finetune_operator.builders.apikey import generate_key
from finetune_operator.builders.modelserver import ServerNames, ServerOwner, generated_key_secret
from finetune_operator.core.accepted_spec import AcceptedSpecs
from finetune_operator.core.errors import NameTaken, TemporaryError
from finetune_operator.core.kube import Kube
from finetune_operator.core.settings import Settings
from finetune_operator.core.status_patch import merge_patch, now_rfc3339
from finetune_operator.core.store import Key, Store
from finetune_operator.core.workqueue import RequeueError
from finetune_operator.modelserver.observed import config_map_data, deployment_hash, owned
from finetune_operator.modelserver.plan import (
    NAME_TAKEN_RETRY_SECONDS,
    ServerPlan,
    ServerSnapshot,
    key_to_generate,
    name_taken,
    plan,
)
from finetune_operator.modelserver.store import ServerStore

log = logging.getLogger(__name__)


class ServerReconciler:
    def __init__(self, kube: Kube, store: Store, settings: Settings, servers: ServerStore | None = None) -> None:
        self.kube, self.store, self.settings = kube, store, settings
        self.servers = servers or ServerStore()
        # specs read as accepted across a CRD upgrade that adds a defaulted field (core.accepted_spec)
        self.accepted: AcceptedSpecs[ModelServerSpec] = AcceptedSpecs(SERVER_KIND, parse_server_spec)

    def reconcile(self, key: Key) -> float | None:
        """One pass; returns seconds until the next one (temporary API trouble: the queue's backoff)."""
        try:
            return self._reconcile(key)
        except TemporaryError as error:
            raise RequeueError(str(error), error.delay) from error

    def _reconcile(self, key: Key) -> float | None:
        body = self.store.server(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None  # its objects go by garbage collection; the FineTuneJobs see ServerNotFound
        uid = str(body["metadata"]["uid"])
        body = self._as_accepted(body)
        snapshot = ServerSnapshot(
            body=body,
            jobs=tuple(self.store.bodies_naming(key, reference_of)),
            children=self.servers.children(key[0], uid),
            now=now_rfc3339(),
        )
        decided = plan(snapshot, self.settings)
        try:
            rolls = any(m["kind"] == "Deployment" for m in decided.apply)
            if rolls and key_to_generate(body):  # before the Deployment reading it; NameTaken: the name is not ours
                owner = ServerOwner(key[0], key[1], uid)
                if self.kube.create(generated_key_secret(owner, generate_key())) is not None:
                    log.info("ModelServer %s/%s: generated its API key Secret", key[0], key[1])
            self._execute(key, uid, decided)
        except NameTaken as error:  # an object of its name belongs to someone else: never taken over
            log.warning("ModelServer %s/%s: %s", key[0], key[1], error)
            self._write(body, name_taken(snapshot, str(error)))
            return NAME_TAKEN_RETRY_SECONDS
        self._write(body, decided.status)
        return decided.requeue_after

    def _as_accepted(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with its spec as this operator accepted it: a generation served before (Ready not refused as
        ConfigInvalid) is read without a newer CRD's defaulted fields (core.accepted_spec); any other refusal is
        left for the plan, which reports it by name (Ready=False, ConfigInvalid)."""
        ready = cond.find((body.get("status") or {}).get("conditions"), cond.READY)
        refused = ready is not None and ready.get("reason") == "ConfigInvalid"
        try:
            _spec, raw = self.accepted.read(body, refused_before=refused)
        except ValidationError:
            return body
        return body if raw is body.get("spec") else {**body, "spec": raw}

    def prune(self) -> int:
        """At each resync: the objects filed under no live server, and the unknown-field warnings' memory of the
        servers no longer held. How many groups went."""
        dropped = self.servers.prune()
        self.accepted.prune(lambda uid: self.servers.key_of(uid) is not None)
        return dropped

    def _file(self, written: dict[str, Any] | None) -> None:
        """Remember what a pass wrote, so the next pass, before the watch reports it, does not write it again
        (filed by its controller ownerReference, like the watch's events: core.kube wrote it only if ours)."""
        if not written:
            return
        meta = written.get("metadata") or {}
        version = str(meta.get("resourceVersion", ""))
        if written.get("kind") == "ConfigMap":
            self.servers.put_config_map(owned(written), str(meta.get("name", "")), version, config_map_data(written))
        elif written.get("kind") == "Deployment":
            self.servers.put_deployment(owned(written), version, deployment_hash(written))

    def _execute(self, key: Key, uid: str, decided: ServerPlan) -> None:
        """Write what the plan says. core.kube creates, applies and deletes only the server's own objects (its
        controller ownerReference): NameTaken when one of these names holds someone else's object."""
        namespace, name = key
        for manifest in decided.create:
            self._file(self.kube.create(manifest))  # None: it exists and is ours; the watch reports it
        for manifest in decided.apply:
            self._file(self.kube.apply(manifest))
        for api_version, kind, child in decided.delete:
            self.kube.delete(api_version, kind, namespace, child, owner=uid)
        if decided.desired_changed:
            log.info("ModelServer %s/%s: desired adapters %s", namespace, name, sorted(a.name for a in decided.desired))
        if decided.drop_reports:
            loaded = ServerNames.of(name).loaded
            self.kube.merge_patch("v1", "ConfigMap", namespace, loaded, {"data": dict.fromkeys(decided.drop_reports)})

    def _write(self, body: dict[str, Any], new: dict[str, Any]) -> None:
        meta = body["metadata"]
        patch = merge_patch(body.get("status") or {}, new)
        if patch:
            patched = self.kube.patch_status(
                meta["namespace"], meta["name"], patch, meta["resourceVersion"], kind=SERVER_KIND
            )
            self.store.put_server(patched)
