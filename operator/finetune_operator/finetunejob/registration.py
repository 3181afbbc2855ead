"""How the FineTuneJob loop registers (core.registry): its kind, its loop, and what it watches.

FineTuneJob bodies fill the store and queue themselves; its Jobs, run pods (training and validation) and serving
Deployment are streamed by the job-uid label (finetune.dev/job-uid) and filed as compact observations by their
controller ownerReference (api.ownership, core.store: a Job or Deployment under its FineTuneJob's namespace and
uid, a pod under its Job's), and queue their owner urgently; a ModelServer's change queues the FineTuneJobs naming
it, which read their verdict from its status. At each resync the store prunes what names no live owner.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import GROUP, KIND, PLURAL, VERSION
from finetune_operator.api.labels import COMPONENT_PROGRESS, COMPONENT_TRAINER, COMPONENT_VALIDATOR, LABEL_UID
from finetune_operator.api.modelserver import SERVER_KIND, SERVER_PLURAL, reference_of
from finetune_operator.api.ownership import controller_uid
from finetune_operator.core.metrics import JOBS_BY_PHASE
from finetune_operator.core.observed import deployment_obs, job_obs, pod_obs
from finetune_operator.core.registry import (
    CONFIG_MAPS,
    DELETED,
    DEPLOYMENTS,
    JOBS,
    PODS,
    Controller,
    Resource,
    Watch,
)
from finetune_operator.core.store import Key
from finetune_operator.finetunejob.controller import Reconciler
from finetune_operator.finetunejob.progress import report_in

FINETUNEJOBS = Resource(GROUP, VERSION, PLURAL, KIND)
MODELSERVERS = Resource(GROUP, VERSION, SERVER_PLURAL, SERVER_KIND)


def _job_body(loop: Reconciler, event: str, body: dict[str, Any]) -> list[Key]:
    meta = body["metadata"]
    if event == DELETED:
        loop.store.forget_body(meta["namespace"], meta["name"], meta["uid"])
        loop.forget(meta["uid"])
        JOBS_BY_PHASE.forget(meta["namespace"], meta["name"])
        return []
    if loop.store.holds(body):
        # The event of a status this operator wrote: the pass that wrote it filed the answer and decided on
        # everything it changed; a pass for it would be one more per status write (about a third of all passes
        # at 500 jobs), every one a no-op, queued ahead of new FineTuneJobs and after it. A change by anyone
        # else has a new resourceVersion; the resync still visits every key.
        return []
    return [loop.store.put_body(body)]


def _server_body(loop: Reconciler, _event: str, body: dict[str, Any]) -> list[Key]:
    """A ModelServer changed (its spec, or the status a pass wrote): its FineTuneJobs read their verdict."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    return [(b["metadata"]["namespace"], b["metadata"]["name"]) for b in loop.store.bodies_naming(key, reference_of)]


def _queued(key: Key | None) -> list[Key]:
    return [key] if key is not None else []


def _job(loop: Reconciler, event: str, body: dict[str, Any]) -> list[Key]:
    """A Job's event: filed under its controller FineTuneJob (none: nobody's child); that owner is queued."""
    job = job_obs(body)
    if event == DELETED:
        loop.store.forget_job(job.namespace, job.owner_uid, job.name)
    else:
        loop.store.put_job(job)
    return _queued(loop.store.owner_key(job.namespace, job.owner_uid))


def _pod(loop: Reconciler, event: str, body: dict[str, Any]) -> list[Key]:
    """A run pod's event: filed under its controller Job (a bare data-check pod: its controller FineTuneJob);
    the FineTuneJob it counts for is queued."""
    pod = pod_obs(body)
    if event == DELETED:
        loop.store.forget_pod(pod)
    else:
        loop.store.put_pod(pod)
    return _queued(loop.store.owner_of_pod(pod))


def _progress(loop: Reconciler, event: str, body: dict[str, Any]) -> list[Key]:
    """The trainer's progress ConfigMap: its report, checked (progress.report_in: the operator's own ConfigMap for
    that FineTuneJob, known keys, bounded values), is filed under its controller FineTuneJob, which is queued
    when the report changed. Watched rather than read on a timer: a read every 5 s of every running trainer's
    ConfigMap was a request and a pass per job per 5 s (100 a second at 500 jobs), whether or not it moved."""
    owner = controller_uid(body, KIND)
    namespace = str((body.get("metadata") or {}).get("namespace") or "")
    if not owner:
        return []
    report = None if event == DELETED else report_in(body, owner)
    if not loop.store.put_progress(namespace, owner, report):
        return []
    return _queued(loop.store.owner_key(namespace, owner))


def _deployment(loop: Reconciler, event: str, body: dict[str, Any]) -> list[Key]:
    """The serving Deployment's event: filed under its controller FineTuneJob, which is queued."""
    deployment = deployment_obs(body)
    if event == DELETED:
        loop.store.forget_deployment(deployment.namespace, deployment.owner_uid, deployment.uid)
    else:
        loop.store.put_deployment(deployment)
    return _queued(loop.store.owner_key(deployment.namespace, deployment.owner_uid))


CONTROLLER: Controller[Reconciler] = Controller(
    kind=KIND,
    resource=FINETUNEJOBS,
    build=Reconciler,
    reconcile=Reconciler.reconcile,
    keys=lambda loop: loop.store.all_keys(),
    concurrency=lambda settings: settings.reconcile_threads,
    prune=Reconciler.prune,
    watches=(
        Watch(FINETUNEJOBS, _job_body),
        Watch(MODELSERVERS, _server_body),
        Watch(JOBS, _job, owner_label=LABEL_UID, urgent=True),
        # the pods of a run's Jobs, training and validation; serving pods are followed through their Deployment
        Watch(
            PODS,
            _pod,
            owner_label=LABEL_UID,
            components=(COMPONENT_TRAINER, COMPONENT_VALIDATOR),
            urgent=True,
        ),
        Watch(DEPLOYMENTS, _deployment, owner_label=LABEL_UID, components=("serving",), urgent=True),
        Watch(CONFIG_MAPS, _progress, owner_label=LABEL_UID, components=(COMPONENT_PROGRESS,)),
    ),
)
