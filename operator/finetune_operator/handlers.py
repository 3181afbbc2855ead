"""Thin kopf glue: watch events fill each kind's memory and queue its keys; nothing else happens here.

The kinds and what they watch are in the registry (core.registry; each kind's registration.py): this module
registers one kopf event handler per watched resource, one work queue per kind, primes each kind's memory before
its workers start (so the first passes after a restart see the children that already exist), and periodically
prunes each kind's memory of children that name no live owner and requeues every key (the resync).

Only `on.event` handlers are used: kopf then keeps no progress or diff-base annotations (and, with NoDiffBase,
computes no diff base at all) and adds no finalizer, so the operator writes nothing into a FineTuneJob but its
status (a GitOps tool sees no drift), and deletion is plain garbage collection by owner references. The trials
a FineTuneSweep creates are the only FineTuneJobs whose spec the operator writes (suspended when stopped early,
promoted when published). Children are streamed with server-side label selectors: only the operator's own
objects, never every pod of a shared cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from finetune_operator.core.kube import Kube
from finetune_operator.core.metrics import serve
from finetune_operator.core.registry import Controller, Resource, resources, selectors
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Key, Store
from finetune_operator.core.workqueue import WorkQueue
from finetune_operator.finetunejob.registration import CONTROLLER as FINETUNEJOB
from finetune_operator.finetunesweep.registration import CONTROLLER as FINETUNESWEEP
from finetune_operator.modelserver.registration import CONTROLLER as MODELSERVER

CONTROLLERS: tuple[Controller[Any], ...] = (FINETUNEJOB, FINETUNESWEEP, MODELSERVER)

log = logging.getLogger(__name__)


@dataclass
class Running:
    """One registered kind at run time: its loop and its queue."""

    controller: Controller[Any]
    loop: Any
    queue: WorkQueue[Key]


@dataclass
class Runtime:
    store: Store
    executor: ThreadPoolExecutor
    running: list[Running] = field(default_factory=list)
    resync: asyncio.Task[None] | None = None


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


def _prime(kube: Kube, running: list[Running], namespaces: tuple[str, ...]) -> None:
    """Read the existing children of every kind once (what an informer's initial list does) before any pass. The
    label selectors only narrow what is read; each kind files an object by its controller ownerReference."""
    for namespace in namespaces or (None,):
        for kind in running:
            for watch in kind.controller.children():
                resource = watch.resource
                for body in kube.list(resource.api_version, resource.kind, namespace, watch.selector):
                    watch.observe(kind.loop, "ADDED", body)


async def _resync(runtime: Runtime, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        for kind in runtime.running:
            if kind.controller.prune is not None:  # children that name no live owner (forged uids, late events)
                kind.controller.prune(kind.loop)
            for key in kind.controller.keys(kind.loop):
                kind.queue.add(key)


def _queue(controller: Controller[Any], loop: Any, executor: ThreadPoolExecutor, settings: Settings) -> WorkQueue[Key]:
    """A kind's work queue: each pass runs on the reconcile threads (the client is blocking)."""
    running_loop = asyncio.get_running_loop()

    async def handle(key: Key) -> float | None:
        return await running_loop.run_in_executor(executor, controller.reconcile, loop, key)

    return WorkQueue(handle, concurrency=controller.concurrency(settings))


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base for an operator with only `on.event` handlers: nothing built, read or stored.

    kopf computes the diff base of every event it streams, whatever the handlers (a deep copy of the whole body,
    status and managedFields included, then trimmed); only create/update/resume handlers ever read it, and this
    operator registers none (tests/unit/operator/test_handlers_kopf.py keeps it so). At 500 new FineTuneJobs
    that copy was about a sixth of the operator's CPU."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: Settings = memo["settings"]
    settings.posting.enabled = False  # our own Events: phase changes, tracking newly degraded
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # Server-side filters: only our children are streamed, never every pod of a shared cluster.
    for resource, selector in selectors(CONTROLLERS).items():
        settings.watching.label_selectors[(resource.group, resource.plural) if resource.group else resource.plural] = (
            selector
        )
    # reconcile threads + children pool; with leader election every write asks the fence first (core.leader)
    kube = Kube.from_environment(
        pool_size=ours.reconcile_threads + 12, identity=memo.get("identity") or "", guard=memo.get("fence")
    )
    store = Store()
    runtime = Runtime(store, ThreadPoolExecutor(max_workers=ours.reconcile_threads, thread_name_prefix="reconcile"))
    for controller in CONTROLLERS:
        loop = controller.build(kube, store, ours)
        runtime.running.append(Running(controller, loop, _queue(controller, loop, runtime.executor, ours)))
    await asyncio.get_running_loop().run_in_executor(runtime.executor, _prime, kube, runtime.running, ours.namespaces)
    for kind in runtime.running:
        kind.queue.start()
    runtime.resync = asyncio.create_task(_resync(runtime, ours.resync_seconds))
    memo["runtime"] = runtime
    serve(ours.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if isinstance(runtime, Runtime):
        if runtime.resync:
            runtime.resync.cancel()
        for kind in runtime.running:
            await kind.queue.stop()
        runtime.executor.shutdown(wait=False, cancel_futures=True)


def _on_event(resource: Resource) -> Callable[..., Awaitable[None]]:
    """The handler of one watched resource: every kind's watch of it files the event and queues its keys."""

    async def on_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
        raw, kind_of_event = dict(body), str(event.get("type") or "")
        for kind in _runtime(memo).running:
            for watch in kind.controller.watches:
                if watch.resource == resource and watch.takes(raw):
                    for key in watch.observe(kind.loop, kind_of_event, raw):
                        kind.queue.add(key, urgent=watch.urgent)

    return on_event


for _resource in resources(CONTROLLERS):
    kopf.on.event(_resource.group, _resource.version, _resource.plural, id=f"{_resource.plural}-event")(
        _on_event(_resource)
    )
