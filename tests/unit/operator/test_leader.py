"""Leader election's decision rules (finetune_operator.core.leader.decide, fresh) and the write fence: pure, by this
process's own clock (a fake one here)."""

from __future__ import annotations

import asyncio

import pytest
from finetune_operator.core.errors import NotLeader, TemporaryError
from finetune_operator.core.leader import Fence, LeaderElector, Seen, decide, fresh


def test_no_lease_is_created() -> None:
    assert decide(None, "me", now=100.0, lease_seconds=15) == "create"


def test_own_lease_is_renewed_even_when_old() -> None:
    assert decide(Seen("me", "t1", 0, at=0.0), "me", now=100.0, lease_seconds=15) == "renew"


def test_another_holder_is_waited_for_until_a_whole_lease_passed_unchanged() -> None:
    seen = Seen("other", "t1", 3, at=50.0)
    assert decide(seen, "me", now=64.9, lease_seconds=15) == "wait"
    assert decide(seen, "me", now=65.0, lease_seconds=15) == "take"


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(Seen("", "t1", 3, at=99.0), "me", now=99.5, lease_seconds=15) == "take"


def test_the_leader_gives_up_before_a_standby_may_take_over() -> None:
    with pytest.raises(ValueError, match="renew_deadline < lease_seconds"):
        LeaderElector(None, "ns", "lease", "me", lease_seconds=10, renew_deadline=10)  # type: ignore[arg-type]


def test_leadership_is_fresh_only_while_the_last_renewal_is_younger_than_the_renew_deadline() -> None:
    assert fresh(100.0, now=109.9, renew_deadline=10)
    assert not fresh(100.0, now=110.0, renew_deadline=10)
    assert not fresh(100.0, now=400.0, renew_deadline=10)  # woke up long after (the monotonic clock ran on)
    assert not fresh(None, now=0.0, renew_deadline=10)  # never renewed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Renewals:
    """The elector's client: every Lease read finds it held by `holder`; a replace succeeds (renewed)."""

    def __init__(self, holder: str = "me") -> None:
        self.holder, self.writes = holder, 0

    def get(self, *_: object) -> dict[str, object]:
        spec = {"holderIdentity": self.holder, "renewTime": "t", "leaseTransitions": 0}
        return {"metadata": {"resourceVersion": "1"}, "spec": spec}

    def replace(self, _: object) -> dict[str, object]:
        self.writes += 1
        return {}

    def create(self, _: object) -> dict[str, object]:
        raise TemporaryError("exists")


def elector(clock: Clock, kube: object = None) -> LeaderElector:
    return LeaderElector(kube or Renewals(), "ns", "lease", "me", clock=clock)  # type: ignore[arg-type]


def test_the_fence_lets_writes_through_while_the_renewal_is_fresh() -> None:
    clock, downs = Clock(), []
    leader = elector(clock)
    assert leader.try_acquire_or_renew()
    fence = Fence(leader, downs.append)
    clock.now += 9.9
    fence("create Job ns/j")
    assert downs == []


def test_a_leader_that_wakes_past_its_renew_deadline_refuses_the_write_and_steps_down_once() -> None:
    clock, downs = Clock(), []
    leader = elector(clock)
    assert leader.try_acquire_or_renew()
    fence = Fence(leader, downs.append)
    clock.now += 30.0  # SIGSTOPped past the lease: the steady clock kept running
    with pytest.raises(NotLeader, match=r"refused to patch FineTuneJob ns/x status: leadership is stale"):
        fence("patch FineTuneJob ns/x status")
    assert len(downs) == 1 and "last renewed 30.0s ago" in downs[0]
    with pytest.raises(NotLeader):  # every later write too; step_down is called once
        fence("create Job ns/j")
    assert len(downs) == 1


def test_once_stale_the_fence_never_opens_again_even_if_a_renewal_lands() -> None:
    clock, downs = Clock(), []
    leader = elector(clock)
    assert leader.try_acquire_or_renew()
    fence = Fence(leader, downs.append)
    clock.now += 10.0
    with pytest.raises(NotLeader):
        fence("delete Job ns/j")
    assert leader.try_acquire_or_renew()  # a renewal raced in: the process is on its way out regardless
    with pytest.raises(NotLeader):
        fence("delete Job ns/j")


def test_a_process_that_never_renewed_is_refused() -> None:
    downs: list[str] = []
    with pytest.raises(NotLeader, match="never renewed"):
        Fence(elector(Clock()), downs.append)("create Job ns/j")
    assert len(downs) == 1


def test_keep_steps_down_without_renewing_when_it_wakes_past_the_deadline() -> None:
    clock, kube = Clock(), Renewals()
    leader = LeaderElector(kube, "ns", "lease", "me", retry_seconds=0.01, clock=clock)  # type: ignore[arg-type]
    assert leader.try_acquire_or_renew() and kube.writes == 1
    clock.now += 16.0  # frozen past the lease; the Lease itself still names us (nobody took it yet)
    asyncio.run(asyncio.wait_for(leader.keep(), timeout=5))
    assert kube.writes == 1  # returned (stepped down) without renewing a lease it could not vouch for


def test_the_default_clock_never_goes_back() -> None:
    from finetune_operator.core.leader import steady_clock

    first = steady_clock()
    assert steady_clock() >= first
    assert LeaderElector(None, "ns", "lease", "me").clock is steady_clock  # type: ignore[arg-type]
