"""Leader election's decision rule (finetune_operator.core.leader.decide): pure, by this process's own clock."""

from __future__ import annotations

import pytest
from finetune_operator.core.leader import LeaderElector, Seen, decide


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
