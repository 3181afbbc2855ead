"""Chaos, operator replicas: two operators with leader election, the active one SIGKILLed in the middle of a burst.

The election runs on a real coordination.k8s.io Lease (finetune_operator.core.leader). What must hold: while both run,
only the Lease holder creates anything; once it is killed, the standby takes the Lease after the lease duration
(15 s, measured by its own clock) and finishes the burst; every FineTuneJob converges with exactly one training
Job. The burst is 20 kwok-played jobs; `bench/chaos.py` runs 200 and prints the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from finetune_operator.core.kube import Kube
from finetune_operator.core.leader import LeaderElector

from tests.integration.conftest import Operator
from tests.support import burst
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

JOBS = 20
LEASE = "finetune-operator"


def holder(cluster: Any, namespace: str) -> str:
    from kubernetes import client

    try:
        lease: Any = client.CoordinationV1Api(cluster.api_client).read_namespaced_lease(LEASE, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def leading(operator: Operator) -> bool:
    return "leads (Lease" in operator.log_path.read_text(errors="replace")


def test_one_of_two_electors_leads_and_the_other_takes_over_a_released_or_expired_lease(
    cluster: Any, namespace: str
) -> None:
    kube = Kube(cluster.api_client)
    first, second = (
        LeaderElector(kube, namespace, "elect", who, lease_seconds=3.0, renew_deadline=2.0, retry_seconds=0.5)
        for who in ("first", "second")
    )
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()  # held, and seen fresh
    assert first.try_acquire_or_renew()  # the holder renews
    first.release()
    assert second.try_acquire_or_renew()  # released: taken at once
    # the holder dies (no more renewals): the other takes it once a lease duration passed unchanged
    assert not first.try_acquire_or_renew()
    started = time.monotonic()
    wait_for("the expired lease to be taken", first.try_acquire_or_renew, timeout=10, interval=0.2)
    assert time.monotonic() - started >= 3.0 - 0.3
    assert not second.try_acquire_or_renew()  # the old holder finds it taken and steps down


def test_killing_the_leader_mid_burst_hands_over_without_duplicates(
    cluster: Any, operator_factory: Callable[..., Operator], namespace: str
) -> None:
    args = ["--leader-election", "--leader-election-namespace", namespace]
    operators = [operator_factory(namespace, args=args) for _ in range(2)]
    active = wait_for("a leader", lambda: next((op for op in operators if leading(op)), None), timeout=60)
    standby = next(op for op in operators if op is not active)
    burst.create(cluster.custom, namespace, JOBS, delay="3s")
    wait_for("the first training Jobs", lambda: burst.count_jobs(cluster.batch, namespace) >= 3, timeout=60)
    assert not leading(standby), standby.log_tail()
    before = burst.count_jobs(cluster.batch, namespace)
    old = holder(cluster, namespace)
    active.kill()
    killed = time.monotonic()
    wait_for("the standby to take the Lease", lambda: holder(cluster, namespace) not in ("", old), timeout=60)
    took = time.monotonic() - killed
    final = burst.wait_converged(cluster.custom, cluster.batch, namespace, JOBS, timeout=180)
    print(f"leader killed with {before}/{JOBS} Jobs created; the standby held the Lease {took:.1f}s later")
    assert leading(standby), standby.log_tail()
    assert took >= 10  # it waited out the lease (15 s by its clock, from when it last saw a renewal)
    assert final.duplicates == {} and final.orphans == []
    assert sorted(len(names) for names in final.jobs_per_uid.values()) == [1] * JOBS
