"""A coalescing work queue of FineTuneJob keys, as in client-go: one key is never reconciled twice at once.

Why not reconcile inside each kopf handler: events for one FineTuneJob arrive from four watches (the job,
its Job, its pods, its Deployment) in different kopf tasks; reconciling there would race. Here a burst
of events for one key becomes one pass (a key already queued is not queued again; a key being reconciled
is marked dirty and runs once more afterwards), failures back off per key, and "look again in N seconds"
(a missing secret) is a delayed add.

Two lanes: a change seen on a child (a pod finished, a Deployment became Available) is `urgent` and goes
before new or edited FineTuneJobs, so status keeps following running work while a burst of creations
is being worked off (a key queued in the normal lane is promoted, never run twice).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from finetune_operator.core.metrics import QUEUE_DEPTH

K = TypeVar("K")
log = logging.getLogger(__name__)

MAX_BACKOFF = 120.0


class RequeueError(Exception):
    """A failed pass that says when to try again."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class WorkQueue(Generic[K]):
    def __init__(self, handler: Callable[[K], Awaitable[float | None]], concurrency: int) -> None:
        self._handler = handler
        self._concurrency = concurrency
        self._lanes: tuple[deque[K], deque[K]] = (deque(), deque())  # urgent, normal
        self._tokens = asyncio.Semaphore(0)
        self._queued: dict[K, int] = {}  # key -> lane it will run from
        self._running: set[K] = set()
        self._dirty: dict[K, bool] = {}  # key -> urgent
        self._failures: dict[K, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()

    def add(self, key: K, urgent: bool = False) -> None:
        """Reconcile `key` soon (once, however often this is called before it runs)."""
        lane = 0 if urgent else 1
        if key in self._running:
            self._dirty[key] = self._dirty.get(key, False) or urgent
        elif self._queued.get(key, 2) > lane:
            self._queued[key] = lane
            self._lanes[lane].append(key)
            self._tokens.release()
            QUEUE_DEPTH.set(len(self._queued))

    async def _next(self) -> K:
        """The next key to run: urgent lane first; entries left behind by a promotion are skipped."""
        while True:
            await self._tokens.acquire()
            for lane, entries in enumerate(self._lanes):
                if entries:
                    key = entries.popleft()
                    if self._queued.get(key) == lane:
                        del self._queued[key]
                        return key
                    break

    def add_after(self, key: K, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.add(key)

        handle = loop.call_later(max(0.0, delay), fire)
        self._timers.add(handle)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"reconcile-{i}") for i in range(self._concurrency)]

    async def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def idle(self) -> bool:
        return not self._queued and not self._running

    def _backoff(self, key: K, suggested: float | None) -> float:
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        return min(MAX_BACKOFF, suggested if suggested is not None else 0.5 * 2 ** min(count, 8))

    async def _work(self) -> None:
        while True:
            key = await self._next()
            QUEUE_DEPTH.set(len(self._queued))
            self._running.add(key)
            requeue: float | None = None
            try:
                requeue = await self._handler(key)
                self._failures.pop(key, None)
            except RequeueError as error:
                requeue = self._backoff(key, error.delay)
                log.info("reconcile %s: %s (again in %.1fs)", key, error, requeue)
            except Exception:
                requeue = self._backoff(key, None)
                log.exception("reconcile %s failed (again in %.1fs)", key, requeue)
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self.add(key, urgent=self._dirty.pop(key))
            elif requeue is not None:
                self.add_after(key, requeue)
