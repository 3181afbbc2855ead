"""One level-triggered reconcile pass for one ModelServer: decide its adapters (pure, `sharing.admit`), apply
its objects and desired list, read what every replica reports loaded, write its status.

Why polled while converging: a replica's loaded adapters arrive in the report ConfigMap its sidecar patches
and in pod readiness, neither of which the operator watches (a shared cluster's pods and ConfigMaps are
not streamed to it); a pass therefore asks again in a few seconds until every replica holds the desired
list, then every half minute. The FineTuneJobs naming the server re-read its status when the watch
reports the status change (handlers), so the verdict is decided here once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from finetune_operator.api import conditions as cond
from finetune_operator.api.base import invalid_spec_message
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH
from finetune_operator.api.modelserver import SERVER_KIND, parse_server_spec, reference_of
from finetune_operator.builders.modelserver import (
    ADAPTERS_KEY,
    ServerNames,
    ServerOwner,
    adapters_config_map,
    endpoint_url,
    loaded_config_map,
    selector,
    server_bundle,
)
from finetune_operator.core.errors import TemporaryError
from finetune_operator.core.kube import Kube
from finetune_operator.core.settings import Settings
from finetune_operator.core.status_patch import merge_patch, now_rfc3339
from finetune_operator.core.store import Key, Store
from finetune_operator.core.workqueue import RequeueError
from finetune_operator.modelserver.plan import (
    Admission,
    Replica,
    admit,
    candidate_of,
    converged,
    replica_of,
    server_status,
)

log = logging.getLogger(__name__)

CONVERGING_SECONDS = 3.0
STEADY_SECONDS = 30.0


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _report(data: dict[str, str], pod: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(data[pod]) if pod in data else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


class ServerReconciler:
    def __init__(self, kube: Kube, store: Store, settings: Settings) -> None:
        self.kube, self.store, self.settings = kube, store, settings

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
        meta, old = body["metadata"], body.get("status") or {}
        generation = int(meta.get("generation") or 1)
        try:
            spec = parse_server_spec(body.get("spec") or {})
        except ValidationError as error:
            message = invalid_spec_message(error)
            invalid = cond.condition(cond.READY, False, "ConfigInvalid", message, generation)
            self._write(body, {"observedGeneration": generation, "conditions": [invalid]})
            return None
        owner = ServerOwner(meta["namespace"], meta["name"], meta["uid"])
        candidates = [
            c for c in (candidate_of(b) for b in self.store.bodies_naming(key, reference_of)) if c is not None
        ]
        held = frozenset(str(a.get("name")) for a in old.get("adapters") or [])
        admission = admit(spec, owner.namespace, owner.name, candidates, held)
        self._apply(owner, spec.replicas, server_bundle(spec, owner, self.settings), admission)
        replicas = self._replicas(owner)
        ready = sum(1 for r in replicas if r.ready)
        done = converged(admission, [r for r in replicas if r.ready]) and ready >= spec.replicas
        conditions = [
            cond.condition(
                cond.READY,
                ready > 0,
                "Ready" if ready else "NoReplicaReady",
                f"{ready} of {spec.replicas} replicas ready",
                generation,
            ),
            cond.condition(
                "Converged",
                done,
                "Converged" if done else "Converging",
                f"every replica holds the {len(admission.adapters)} desired adapters"
                if done
                else "replicas are loading or unloading adapters",
                generation,
            ),
        ]
        status = server_status(
            generation=generation,
            endpoint=endpoint_url(owner),
            admission=admission,
            replicas=replicas,
            desired_replicas=spec.replicas,
            max_adapters=spec.max_adapters,
            conditions=cond.merge(old.get("conditions"), conditions, now_rfc3339()),
        )
        self._write(body, status)
        return STEADY_SECONDS if done else CONVERGING_SECONDS

    def _apply(self, owner: ServerOwner, replicas: int, bundle: list[dict[str, Any]], admission: Admission) -> None:
        names = ServerNames.of(owner.name)
        deployment = self.kube.get("apps/v1", "Deployment", owner.namespace, names.deployment)
        want = bundle[-1]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        have = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SPEC_HASH)
        if have != want:
            for manifest in bundle:
                if manifest["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                    self.kube.create(manifest)  # fixed per server; created once (the operator may not patch them)
                else:
                    self.kube.apply(manifest)
            if replicas == 1:  # one replica: a PDB would block every node drain
                self.kube.delete("policy/v1", "PodDisruptionBudget", owner.namespace, names.deployment)
        if self.kube.get("v1", "ConfigMap", owner.namespace, names.loaded) is None:
            self.kube.create(loaded_config_map(owner))
        desired = adapters_config_map(owner, admission.adapters)
        current = self.kube.get("v1", "ConfigMap", owner.namespace, names.adapters)
        if current is None or (current.get("data") or {}).get(ADAPTERS_KEY) != desired["data"][ADAPTERS_KEY]:
            self.kube.apply(desired)
            log.info("ModelServer %s/%s: desired adapters %s", owner.namespace, owner.name, sorted(admission.names))

    def _replicas(self, owner: ServerOwner) -> list[Replica]:
        """Every live server pod with what its sidecar reports; reports of pods that are gone are dropped."""
        names = ServerNames.of(owner.name)
        labels = ",".join(f"{k}={v}" for k, v in selector(owner).items())
        pods = [
            p
            for p in self.kube.list("v1", "Pod", owner.namespace, labels)
            if not p["metadata"].get("deletionTimestamp")
        ]
        report = self.kube.get("v1", "ConfigMap", owner.namespace, names.loaded) or {}
        data: dict[str, str] = report.get("data") or {}
        live = {p["metadata"]["name"] for p in pods}
        stale = {k: None for k in data if k not in live}
        if stale:
            self.kube.merge_patch("v1", "ConfigMap", owner.namespace, names.loaded, {"data": stale})
        return [replica_of(p["metadata"]["name"], _pod_ready(p), _report(data, p["metadata"]["name"])) for p in pods]

    def _write(self, body: dict[str, Any], new: dict[str, Any]) -> None:
        meta = body["metadata"]
        patch = merge_patch(body.get("status") or {}, new)
        if patch:
            patched = self.kube.patch_status(
                meta["namespace"], meta["name"], patch, meta["resourceVersion"], kind=SERVER_KIND
            )
            self.store.put_server(patched)
