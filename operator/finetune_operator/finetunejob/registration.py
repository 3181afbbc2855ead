"""How the FineTuneJob loop registers (core.registry): its kind, its loop, and what it watches.

FineTuneJob bodies fill the store and queue themselves; its Jobs, run pods (training and validation) and serving
Deployment are filed by the job's uid (label finetune.dev/job-uid) as compact observations and queue their owner
urgently; a ModelServer's change queues the FineTuneJobs naming it, which read their verdict from its status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.api.labels import COMPONENT_TRAINER, COMPONENT_VALIDATOR, LABEL_UID
from finetune_operator.api.modelserver import SERVER_KIND, SERVER_PLURAL, reference_of
from finetune_operator.core.metrics import JOBS_BY_PHASE
from finetune_operator.core.observed import deployment_obs, job_obs, pod_obs
from finetune_operator.core.registry import DELETED, DEPLOYMENTS, JOBS, PODS, Controller, Resource, Watch
from finetune_operator.core.store import Key
from finetune_operator.finetunejob.controller import Reconciler

FINETUNEJOBS = Resource(GROUP, VERSION, PLURAL, KIND)
MODELSERVERS = Resource(GROUP, VERSION, SERVER_PLURAL, SERVER_KIND)


def _job_body(loop: Reconciler, event: str, body: dict[str, Any]) -> list[Key]:
    meta = body["metadata"]
    if event == DELETED:
        loop.store.forget_body(meta["namespace"], meta["name"], meta["uid"])
        JOBS_BY_PHASE.forget(meta["namespace"], meta["name"])
        return []
    return [loop.store.put_body(body)]


def _server_body(loop: Reconciler, _event: str, body: dict[str, Any]) -> list[Key]:
    """A ModelServer changed (its spec, or the status a pass wrote): its FineTuneJobs read their verdict."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    return [(b["metadata"]["namespace"], b["metadata"]["name"]) for b in loop.store.bodies_naming(key, reference_of)]


def _child(
    put: Callable[[Reconciler, str, dict[str, Any]], None], forget: Callable[[Reconciler, str, dict[str, Any]], None]
) -> Callable[[Reconciler, str, dict[str, Any]], list[Key]]:
    """A child's event: filed under its FineTuneJob's uid; the FineTuneJob is queued when known."""

    def observe(loop: Reconciler, event: str, body: dict[str, Any]) -> list[Key]:
        uid = body["metadata"]["labels"][LABEL_UID]
        (forget if event == DELETED else put)(loop, uid, body)
        key = loop.store.key_of(uid)
        return [key] if key is not None else []

    return observe


CONTROLLER: Controller[Reconciler] = Controller(
    kind=KIND,
    resource=FINETUNEJOBS,
    build=Reconciler,
    reconcile=Reconciler.reconcile,
    keys=lambda loop: loop.store.all_keys(),
    concurrency=lambda settings: settings.reconcile_threads,
    watches=(
        Watch(FINETUNEJOBS, _job_body),
        Watch(MODELSERVERS, _server_body),
        Watch(
            JOBS,
            _child(
                lambda loop, uid, body: loop.store.put_job(uid, job_obs(body)),
                lambda loop, uid, body: loop.store.forget_job(uid, body["metadata"]["name"]),
            ),
            owner_label=LABEL_UID,
            urgent=True,
        ),
        # the pods of a run's Jobs, training and validation; serving pods are followed through their Deployment
        Watch(
            PODS,
            _child(
                lambda loop, uid, body: loop.store.put_pod(uid, pod_obs(body)),
                lambda loop, uid, body: loop.store.forget_pod(uid, body["metadata"]["name"]),
            ),
            owner_label=LABEL_UID,
            components=(COMPONENT_TRAINER, COMPONENT_VALIDATOR),
            urgent=True,
        ),
        Watch(
            DEPLOYMENTS,
            _child(
                lambda loop, uid, body: loop.store.put_deployment(uid, deployment_obs(body)),
                lambda loop, uid, _body: loop.store.put_deployment(uid, None),
            ),
            owner_label=LABEL_UID,
            components=("serving",),
            urgent=True,
        ),
    ),
)
