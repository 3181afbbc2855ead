"""Chaos, operator replicas: the leader of two is frozen (SIGSTOP) past its lease mid-burst, the standby takes
over, and the old leader is woken (SIGCONT). What must hold: the woken process starts no write (its fence,
finetune_operator.core.leader.Fence, sees by CLOCK_BOOTTIME, which ran on while it was stopped, that its last
renewal is older than the renew deadline) and exits; every FineTuneJob converges with exactly one training Job.
The one exception is the window docs/architecture.md names: a request that had passed the fence when the process
was frozen goes out as it wakes (seen once in CI: one `create serviceaccounts`, answered 500). So the check allows
only a few writes, all arriving within a second of the wake, where a process without the fence sent more than 40
in two seconds.

"Wrote nothing" is read from the API server's audit log (hack/audit-policy.yaml), not from the operator's own
word: each replica's requests carry its identity in the User-Agent, so a write the woken process sent, whatever
it was (a child, a status patch, an Event, its Lease), would be listed there with the time it arrived. The check
is shown to see writes: the same log must list the old leader's writes before the freeze and the new leader's
after the takeover. `bench/chaos.py --faults frozen` runs the same fault on a bigger burst.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Operator
from tests.integration.test_chaos_leader import holder, leading
from tests.support import audit, burst
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

JOBS = 20
LEASE_SECONDS = 15  # finetune_operator.core.leader.LeaderElector's default
IN_FLIGHT_WRITES = 4  # requests that had passed the fence when SIGSTOP came (the window the fence cannot close)
IN_FLIGHT_SECONDS = 1.0  # they leave as soon as the process runs again


def test_a_leader_frozen_past_its_lease_starts_no_write_when_it_wakes_and_exits(
    cluster: Any, operator_factory: Callable[..., Operator], namespace: str
) -> None:
    log = audit.log_path()
    args = ["--leader-election", "--leader-election-namespace", namespace]
    operators = [operator_factory(namespace, args=args) for _ in range(2)]
    active = wait_for("a leader", lambda: next((op for op in operators if leading(op)), None), timeout=60)
    standby = next(op for op in operators if op is not active)
    old = holder(cluster, namespace)
    burst.create(cluster.custom, namespace, JOBS, delay="3s")
    wait_for("the first training Jobs", lambda: burst.count_jobs(cluster.batch, namespace) >= 3, timeout=60)
    assert active.process is not None
    active.process.send_signal(signal.SIGSTOP)  # mid-burst: its threads have passes in flight and queued
    frozen = time.monotonic()
    try:
        new = wait_for(
            "the standby to take the Lease",
            lambda: (h := holder(cluster, namespace)) not in ("", old) and h,
            timeout=60,
        )
        took = time.monotonic() - frozen
        # the new leader acts (a child, a status) before the old one wakes, so the old one's view is stale
        wait_for(
            "a write of the new leader",
            lambda: [
                w for w in audit.writes(f"finetune-operator/{new}", namespace, path=log) if w.resource != "leases"
            ],
            timeout=30,
        )
    finally:
        woke = audit.now()
        active.process.send_signal(signal.SIGCONT)
    code = wait_for("the woken leader to exit", active.process.poll, timeout=20, interval=0.1)
    final = burst.wait_converged(cluster.custom, cluster.batch, namespace, JOBS, timeout=120)

    before = audit.writes(f"finetune-operator/{old}", namespace, path=log)
    after = [w for w in before if w.at >= woke]
    text = active.log_path.read_text(errors="replace")
    print(
        f"frozen with {len(before)} writes made; the standby led {took:.1f}s after the freeze; "
        f"the woken leader exited with {code} and wrote {len(after)} times after waking"
    )
    assert [w for w in before if w.resource != "leases"], "the audit log shows no write of the old leader at all"
    # nothing new: at most the few requests already past the fence at the freeze, arriving as it wakes
    late = [w for w in after if (w.at - woke).total_seconds() > IN_FLIGHT_SECONDS]
    assert len(after) <= IN_FLIGHT_WRITES and late == [], "\n".join(map(str, after))
    assert code == 1 and "leadership is stale" in text and "exiting so that only the new leader acts" in text, (
        active.log_tail()
    )
    assert took >= LEASE_SECONDS - 5  # the standby waited out the lease by its own clock
    assert leading(standby)
    assert final.duplicates == {} and final.orphans == []
    assert sorted(len(names) for names in final.jobs_per_uid.values()) == [1] * JOBS
