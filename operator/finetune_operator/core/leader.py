"""Leader election on a coordination.k8s.io Lease, in front of kopf: only the replica holding it runs the operator.

Why a Lease and not kopf's peering: peering pauses kopf's own event handling only, while this operator's work
queue and periodic resync run beside kopf and would go on reconciling from a stale store in a paused replica;
peers of equal priority both keep running (kopf only warns); and it needs kopf's peering CRDs. A Lease is what
Kubernetes' own controllers elect with, and holding it before kopf even starts means a standby makes no request
but the Lease's.

The rules are client-go's (`leaderelection`): a record is expired when this process has seen it unchanged for
`lease_seconds` by its own clock (no comparison of timestamps written on another machine); every write carries
the resourceVersion read, so of two candidates only one wins; the leader renews every `retry_seconds` and gives
up when it could not renew for `renew_deadline` seconds, which is shorter than `lease_seconds`, so it has stopped
before anyone else may take over. `decide` is pure and unit-tested; `LeaderElector` does the I/O through `kube`.

Fencing (`Fence`, `fresh`): a leader that is frozen (SIGSTOP, a paused container, a suspended host, a long stall)
past its lease wakes up with reconcile threads that had writes lined up, and its `keep` loop needs a moment to
notice. So the operator's `Kube` asks the fence before every write (create, apply, replace, patch, status
patch, delete, Event): leadership counts only while the last successful renewal is younger than
`renew_deadline` by this process's clock (`steady_clock`: CLOCK_BOOTTIME on Linux, which keeps running while a
process is stopped or frozen and while the machine sleeps), so a woken process sees at once that its renewal is
stale. A stale leader refuses the write (`NotLeader`, never retried) and steps down, which here means exiting, as
on any loss of the Lease (`__main__`). The same staleness also covers a renewal that hangs in the network for
longer than the deadline: writes stop at the deadline, not when the renewal's request times out. Reads are not
fenced (they act on nothing). Not covered: a virtual machine whose guest clock itself stands still while the
hypervisor pauses it (the guest cannot tell it was paused); there only the preconditions below protect, until the
`keep` loop reads the Lease and finds it taken.

What fencing cannot close: a thread that passed the check and is stopped before its request reaches the API
server (or whose request was already in flight when the process froze) still writes when it wakes. The API
server cannot refuse it for us: there is no conditional write on another object (a write that holds only while
the Lease is at some resourceVersion), only preconditions on the written object itself. Those the writes carry
where they can: status patches and Role updates carry the resourceVersion they were computed from (so a stale
pass conflicts once the new leader wrote the object), deletes carry the object's uid, creates use deterministic
names (a second create is "already exists", never a duplicate), and applies are idempotent with the uid they
were judged by. The window left is one request per reconcile thread, and only one that was past its check.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from finetune_operator.core.errors import NotLeader, TemporaryError
from finetune_operator.core.kube import Kube

log = logging.getLogger(__name__)

API_VERSION = "coordination.k8s.io/v1"
Action = Literal["create", "renew", "take", "wait"]


@dataclass(frozen=True)
class Seen:
    """The Lease record as last read, and when (this process's steady clock) it was first seen so."""

    holder: str
    renew_time: str
    transitions: int
    at: float


def decide(record: Seen | None, me: str, now: float, lease_seconds: float) -> Action:
    """What a candidate does with the Lease it just read (None: there is none)."""
    if record is None:
        return "create"
    if record.holder == me:
        return "renew"
    if not record.holder or now - record.at >= lease_seconds:
        return "take"  # released, or nobody renewed it for a whole lease duration (by our clock)
    return "wait"


def fresh(renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """Whether leadership still counts at `now` (this process's steady clock): the last successful renewal
    (None: never) is younger than `renew_deadline`, which is shorter than the lease, so no standby can have taken
    it yet. A renewal's time is taken before its request is sent, so it errs on the early (safe) side."""
    return renewed_at is not None and now - renewed_at < renew_deadline


def steady_clock() -> float:
    """Seconds that never go back and that count time spent stopped or suspended: CLOCK_BOOTTIME where the
    platform has it (Linux), else CLOCK_MONOTONIC (which on Linux stops while the machine sleeps)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire, keep and release one Lease for `identity`."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float = 15.0,
        renew_deadline: float = 10.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = steady_clock,
    ) -> None:
        if not retry_seconds < renew_deadline < lease_seconds:
            raise ValueError("leader election needs retry_seconds < renew_deadline < lease_seconds")
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry_seconds = lease_seconds, renew_deadline, retry_seconds
        self.clock = clock
        self.seen: Seen | None = None
        self.renewed_at: float | None = None

    def _manifest(self, transitions: int, acquire_time: str, resource_version: str | None) -> dict[str, Any]:
        now = _micro_time()
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": API_VERSION,
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_seconds),
                "acquireTime": acquire_time or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this process holds the Lease afterwards."""
        now = self.clock()
        try:
            found = self.kube.get(API_VERSION, "Lease", self.namespace, self.name)
            if found is None:
                self.seen = None
            else:
                spec = found.get("spec") or {}
                holder, renew = str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")
                transitions = int(spec.get("leaseTransitions") or 0)
                if self.seen is None or (self.seen.holder, self.seen.renew_time) != (holder, renew):
                    self.seen = Seen(holder, renew, transitions, now)
            action = decide(self.seen, self.identity, now, self.lease_seconds)
            if action == "wait":
                return False
            if action == "create":
                created = self.kube.create(self._manifest(0, "", None))
                if created is None:  # another candidate created it first
                    return False
            else:
                assert found is not None and self.seen is not None
                spec = found.get("spec") or {}
                transitions = self.seen.transitions + (1 if action == "take" else 0)
                acquire = str(spec.get("acquireTime") or "") if action == "renew" else ""
                self.kube.replace(self._manifest(transitions, acquire, found["metadata"]["resourceVersion"]))
                if action == "take":
                    log.info(
                        "leader election: took the Lease %s/%s from %r", self.namespace, self.name, self.seen.holder
                    )
        except TemporaryError as error:  # a conflict (someone else wrote first) or the API is unreachable
            log.warning("leader election: Lease %s/%s not written: %s", self.namespace, self.name, error)
            return False
        self.renewed_at = now
        return True

    async def acquire(self) -> None:
        """Return once this process holds the Lease (polls every `retry_seconds`)."""
        loop = asyncio.get_running_loop()
        log.info("leader election: %s waits for the Lease %s/%s", self.identity, self.namespace, self.name)
        while not await loop.run_in_executor(None, self.try_acquire_or_renew):
            await asyncio.sleep(self.retry_seconds)
        log.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)

    def leads(self) -> bool:
        """Whether this process's leadership is fresh now (`fresh`)."""
        return fresh(self.renewed_at, self.clock(), self.renew_deadline)

    async def keep(self) -> None:
        """Renew every `retry_seconds`; return (leadership lost) once no renewal succeeded for `renew_deadline`.
        A process that wakes up past the deadline (it was frozen) returns at once, without renewing: the standby
        may have acted meanwhile, so this process's view of the world is stale even if the Lease is not taken."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.retry_seconds)
            if not self.leads():
                last = self.renewed_at if self.renewed_at is not None else 0.0
                log.error(
                    "leader election: %s woke up with a stale Lease renewal (%.0fs old, deadline %.0fs): "
                    "leadership is stale, stepping down",
                    self.identity,
                    self.clock() - last,
                    self.renew_deadline,
                )
                return
            if await loop.run_in_executor(None, self.try_acquire_or_renew):
                continue
            last = self.renewed_at if self.renewed_at is not None else 0.0
            if self.clock() - last >= self.renew_deadline:
                log.error(
                    "leader election: %s could not renew the Lease %s/%s for %.0fs: stepping down",
                    self.identity,
                    self.namespace,
                    self.name,
                    self.clock() - last,
                )
                return

    def release(self) -> None:
        """On a clean exit: empty the holder, so a standby takes over at its next poll, not a lease later."""
        try:
            found = self.kube.get(API_VERSION, "Lease", self.namespace, self.name)
            if found is None or (found.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            released = self._manifest(int(found["spec"].get("leaseTransitions") or 0), "", None)
            released["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
            released["spec"]["holderIdentity"] = ""
            self.kube.replace(released)
            log.info("leader election: %s released the Lease %s/%s", self.identity, self.namespace, self.name)
        except TemporaryError as error:
            log.warning("leader election: the Lease was not released (%s); a standby waits it out", error)


class Fence:
    """Asked by the operator's `Kube` before each write (`Kube(guard=...)`): the write goes on only while this
    process's leadership is fresh. On the first stale check it calls `step_down` (the process exits there; a
    test passes a recorder) and refuses with `NotLeader`, as does every later check: once stale, never again
    fresh, even if a renewal races in (the process is on its way out)."""

    def __init__(self, elector: LeaderElector, step_down: Callable[[str], None]) -> None:
        self.elector, self.step_down = elector, step_down
        self.stale = False
        self._lock = threading.Lock()

    def __call__(self, what: str) -> None:
        with self._lock:
            if not self.stale and self.elector.leads():
                return
            first, self.stale = not self.stale, True
        last = self.elector.renewed_at
        age = "never renewed" if last is None else f"last renewed {self.elector.clock() - last:.1f}s ago"
        reason = (
            f"refused to {what}: leadership is stale ({age}, renew deadline {self.elector.renew_deadline:.0f}s); "
            f"{self.elector.identity} steps down"
        )
        if first:
            log.error("leader election: %s", reason)
            self.step_down(reason)
        raise NotLeader(reason)
