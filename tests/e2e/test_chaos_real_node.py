"""Chaos, the real node: a real training pod evicted through the Eviction API (as `kubectl drain` does), then the
node's kubelet restarted under the pod that replaced it (tests/support/real_node.py).

What must hold: the evicted trainer checkpoints on SIGTERM and exits Preempted (75); its replacement resumes from
that checkpoint (steps lost: at most one checkpoint interval); the kubelet restart kills nothing (same pod, no
container restart, training goes on); the run succeeds. The kubelet is back and the node Ready before the test
ends (`Components.restart` waits for it), so the tests after this one find the node as it was.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, VERSION, RealNodeRun
from tests.support import real_node
from tests.support.chaos import Components
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def test_an_evicted_trainer_resumes_and_a_kubelet_restart_loses_nothing(
    cluster: Cluster, namespace: str, real_node_run: RealNodeRun
) -> None:
    if not cluster.local:
        pytest.skip("restarts the local cluster's kubelet (hack/cluster.sh); not possible on $KUBECONFIG")
    body = real_node.manifest("evicted", *real_node_run.args)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    figures = real_node.disrupt(cluster.core, cluster.custom, namespace, "evicted", Components())
    print(figures)

    def finished() -> Any:
        status = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "evicted")["status"]
        return status.get("phase") in ("Succeeded", "Failed") and status

    status = wait_for("the run to succeed", finished, timeout=900, interval=1)
    eviction, kubelet = figures["eviction"], figures["kubelet_restart"]
    assert (eviction["exit_code"], eviction["code"]) == (75, "Preempted"), eviction
    assert eviction["steps_lost"] is not None and 0 <= eviction["steps_lost"] <= real_node.INTERVAL, eviction
    assert kubelet["same_pod_running"] and kubelet["container_restarts"] == 0, kubelet
    assert status["phase"] == "Succeeded", status
