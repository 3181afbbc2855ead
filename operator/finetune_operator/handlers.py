"""Thin kopf glue: watch events fill the store and queue the owning FineTuneJob; nothing else happens here.

Only `on.event` handlers are used: kopf then keeps no progress or diff-base annotations and adds no
finalizer, so the operator writes nothing into a FineTuneJob but its status (a GitOps tool sees no drift),
and deletion is plain garbage collection by owner references. Startup lists the children once before the
workers start, so the first passes after a restart see the Jobs that already exist. FineTuneSweeps are
handled the same way on a queue of their own (sweeps.py); the trials they create are the only FineTuneJobs
whose spec the operator writes (suspended when stopped early, promoted when published).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf

from finetune_operator import GROUP, PLURAL, VERSION
from finetune_operator.api.finetunesweep import LABEL_SWEEP_UID, SWEEP_PLURAL
from finetune_operator.api.labels import COMPONENT_TRAINER, COMPONENT_VALIDATOR, LABEL_COMPONENT, LABEL_UID
from finetune_operator.api.modelserver import SERVER_PLURAL, reference_of
from finetune_operator.core.kube import Kube
from finetune_operator.core.metrics import JOBS_BY_PHASE, serve
from finetune_operator.core.observed import deployment_obs, job_obs, pod_obs
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Key, Store
from finetune_operator.core.workqueue import WorkQueue
from finetune_operator.finetunejob.controller import Reconciler
from finetune_operator.finetunesweep.controller import SweepReconciler, SweepStore
from finetune_operator.finetunesweep.controller import prime as prime_sweeps
from finetune_operator.modelserver.controller import ServerReconciler

RUN_PODS = f"{LABEL_UID},{LABEL_COMPONENT} in ({COMPONENT_TRAINER},{COMPONENT_VALIDATOR})"
"""The pods of a run's Jobs, training and validation; the server streams no others (serving pods are
followed through their Deployment, and a shared cluster's other pods never reach the operator)."""

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    store: Store
    queue: WorkQueue[Key]
    reconciler: Reconciler
    executor: ThreadPoolExecutor
    resync: asyncio.Task[None] | None = None
    servers: WorkQueue[Key] | None = None  # ModelServers (shared serving, servers.py)
    sweeps: SweepStore | None = None  # FineTuneSweeps and their trials (sweeps.py)
    sweep_queue: WorkQueue[Key] | None = None


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


def _prime(kube: Kube, store: Store, namespaces: tuple[str, ...]) -> None:
    """Read the existing children once (what an informer's initial list does) before any reconcile. The label
    selectors only narrow what is read; the store files each object by its controller ownerReference."""
    for namespace in namespaces or (None,):
        for job in kube.list("batch/v1", "Job", namespace, LABEL_UID):
            store.put_job(job_obs(job))
        for pod in kube.list("v1", "Pod", namespace, RUN_PODS):
            store.put_pod(pod_obs(pod))
        for deployment in kube.list("apps/v1", "Deployment", namespace, f"{LABEL_UID},{LABEL_COMPONENT}=serving"):
            store.put_deployment(deployment_obs(deployment))


async def _resync(runtime: Runtime, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        runtime.store.prune()  # children that name no live owner (forged uids, events after a deletion)
        if runtime.sweeps is not None:
            runtime.sweeps.prune()
        for key in runtime.store.all_keys():
            runtime.queue.add(key)
        for key in runtime.store.server_keys():
            if runtime.servers is not None:
                runtime.servers.add(key)
        if runtime.sweeps is not None and runtime.sweep_queue is not None:
            for key in runtime.sweeps.all_keys():
                runtime.sweep_queue.add(key)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: Settings = memo["settings"]
    settings.posting.enabled = False  # our own Events: phase changes, tracking newly degraded
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # Server-side filters: only our children are streamed, never every pod of a shared cluster.
    settings.watching.label_selectors["batch", "jobs"] = LABEL_UID
    settings.watching.label_selectors["pods"] = RUN_PODS
    settings.watching.label_selectors["apps", "deployments"] = f"{LABEL_UID},{LABEL_COMPONENT}=serving"
    kube = Kube.from_environment(pool_size=ours.reconcile_threads + 12)  # reconcile threads + children pool
    store = Store()
    executor = ThreadPoolExecutor(max_workers=ours.reconcile_threads, thread_name_prefix="reconcile")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, _prime, kube, store, ours.namespaces)
    reconciler = Reconciler(kube, store, ours)

    async def handle(key: Key) -> float | None:
        return await loop.run_in_executor(executor, reconciler.reconcile, key)

    queue: WorkQueue[Key] = WorkQueue(handle, concurrency=ours.reconcile_threads)
    queue.start()
    sweeps = SweepStore()
    await loop.run_in_executor(executor, prime_sweeps, kube, sweeps, ours.namespaces or (None,))
    sweep_reconciler = SweepReconciler(kube, sweeps)

    async def handle_sweep(key: Key) -> float | None:
        return await loop.run_in_executor(executor, sweep_reconciler.reconcile, key)

    sweep_queue: WorkQueue[Key] = WorkQueue(handle_sweep, concurrency=1)
    sweep_queue.start()
    server_reconciler = ServerReconciler(kube, store, ours)

    async def handle_server(key: Key) -> float | None:
        return await loop.run_in_executor(executor, server_reconciler.reconcile, key)

    servers: WorkQueue[Key] = WorkQueue(handle_server, concurrency=2)
    servers.start()
    runtime = Runtime(store, queue, reconciler, executor, sweeps=sweeps, sweep_queue=sweep_queue, servers=servers)
    runtime.resync = asyncio.create_task(_resync(runtime, ours.resync_seconds))
    memo["runtime"] = runtime
    serve(ours.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if isinstance(runtime, Runtime):
        if runtime.resync:
            runtime.resync.cancel()
        await runtime.queue.stop()
        if runtime.servers:
            await runtime.servers.stop()
        if runtime.sweep_queue:
            await runtime.sweep_queue.stop()
        runtime.executor.shutdown(wait=False, cancel_futures=True)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def finetunejob_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    meta = body["metadata"]
    _trial_event(runtime, event, dict(body))
    server = reference_of(dict(body))
    if server is not None and runtime.servers is not None:
        runtime.servers.add(server)  # its desired adapters may change (published, deleted, serving off)
    if event.get("type") == "DELETED":
        runtime.store.forget_body(meta["namespace"], meta["name"], meta["uid"])
        JOBS_BY_PHASE.forget(meta["namespace"], meta["name"])
        return
    runtime.queue.add(runtime.store.put_body(dict(body)))


@kopf.on.event(GROUP, VERSION, SERVER_PLURAL)
async def modelserver_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A ModelServer changed (its spec, or the status a pass wrote): reconcile it, and let the FineTuneJobs
    naming it read its verdict."""
    runtime = _runtime(memo)
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if event.get("type") == "DELETED":
        runtime.store.forget_server(*key)
    else:
        runtime.store.put_server(dict(body))
        if runtime.servers is not None:
            runtime.servers.add(key)
    for job in runtime.store.bodies_naming(key, reference_of):
        runtime.queue.add((job["metadata"]["namespace"], job["metadata"]["name"]))


def _trial_event(runtime: Runtime, event: kopf.RawEvent, body: dict[str, Any]) -> None:
    """A sweep's trial changed: file it under its sweep and queue the sweep (its leaderboard may move)."""
    meta = body["metadata"]
    sweep_uid = (meta.get("labels") or {}).get(LABEL_SWEEP_UID)
    if not sweep_uid or runtime.sweeps is None or runtime.sweep_queue is None:
        return
    if event.get("type") == "DELETED":
        key = runtime.sweeps.forget_trial(sweep_uid, meta["namespace"], meta["name"])
    else:
        key = runtime.sweeps.put_trial(sweep_uid, body)
    if key is not None:
        runtime.sweep_queue.add(key, urgent=True)


@kopf.on.event(GROUP, VERSION, SWEEP_PLURAL)
async def finetunesweep_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A FineTuneSweep changed (its spec, or the status a pass wrote): reconcile it."""
    runtime = _runtime(memo)
    if runtime.sweeps is None or runtime.sweep_queue is None:
        return
    meta = body["metadata"]
    if event.get("type") == "DELETED":
        runtime.sweeps.forget_sweep(meta["namespace"], meta["name"], meta["uid"])
        return
    runtime.sweep_queue.add(runtime.sweeps.put_sweep(dict(body)))


def _queue(runtime: Runtime, key: Key | None) -> None:
    if key is not None:
        runtime.queue.add(key, urgent=True)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_UID: kopf.PRESENT})
async def job_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime, job = _runtime(memo), job_obs(dict(body))
    if event.get("type") == "DELETED":
        runtime.store.forget_job(job.namespace, job.owner_uid, job.name)
    else:
        runtime.store.put_job(job)
    _queue(runtime, runtime.store.owner_key(job.namespace, job.owner_uid))


@kopf.on.event("", "v1", "pods", labels={LABEL_UID: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime, pod = _runtime(memo), pod_obs(dict(body))
    if event.get("type") == "DELETED":
        runtime.store.forget_pod(pod)
    else:
        runtime.store.put_pod(pod)
    _queue(runtime, runtime.store.owner_of_pod(pod))


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_UID: kopf.PRESENT, LABEL_COMPONENT: "serving"})
async def deployment_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime, deployment = _runtime(memo), deployment_obs(dict(body))
    if event.get("type") == "DELETED":
        runtime.store.forget_deployment(deployment.namespace, deployment.owner_uid, deployment.uid)
    else:
        runtime.store.put_deployment(deployment)
    _queue(runtime, runtime.store.owner_key(deployment.namespace, deployment.owner_uid))
