"""Chaos, control plane: kube-apiserver restarted, and etcd restarted, in the middle of a FineTuneJob burst.

The fault is real: the component's process is stopped and started again by `hack/cluster.sh up`
(tests/support/chaos.py), always restored before the test ends. What must hold afterwards: every FineTuneJob
converges to Succeeded, each has exactly one training Job (no duplicate from a create whose answer was lost), no
Job is left without its FineTuneJob, and the operator is still running (nobody had to restart it). The burst is
20 kwok-played jobs here; `bench/chaos.py` runs 200 and prints the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Operator
from tests.support import burst
from tests.support.chaos import Components
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

JOBS = 20


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_restart_during_a_burst_loses_nothing(
    component: str, cluster: Any, operator_factory: Callable[..., Operator], namespace: str
) -> None:
    if not cluster.local:
        pytest.skip("restarts the local cluster's own processes (hack/cluster.sh); not possible on $KUBECONFIG")
    operator = operator_factory(namespace)
    burst.create(cluster.custom, namespace, JOBS, delay="4s")
    # mid-burst: some children exist, not all FineTuneJobs are done
    wait_for("the first training Jobs", lambda: burst.count_jobs(cluster.batch, namespace) >= 3, timeout=60)
    down_for = Components().restart(component)
    back = time.monotonic()
    final = burst.wait_converged(cluster.custom, cluster.batch, namespace, JOBS, timeout=240)
    converged = time.monotonic() - back
    print(f"{component}: down and back in {down_for:.1f}s; all {JOBS} converged {converged:.1f}s after it was back")
    assert final.duplicates == {}
    assert final.orphans == []
    assert sorted(len(names) for names in final.jobs_per_uid.values()) == [1] * JOBS
    assert operator.process is not None and operator.process.poll() is None, operator.log_tail()
