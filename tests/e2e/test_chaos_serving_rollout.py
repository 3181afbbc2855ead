"""Chaos, serving on the real node: a published model's two server pods rolled to a retrained run, then one of
them deleted, while 8 clients send requests without pause to whichever pods the Service has ready
(tests/support/serving_chaos.py). Not one request may fail: the rollout keeps maxUnavailable 0, the
PodDisruptionBudget keeps a pod up, and a pod being deleted sleeps in preStop while its endpoint is withdrawn,
then drains what it has in flight.
"""

from __future__ import annotations

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, VERSION, RealNodeRun
from tests.support import serving_chaos

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def test_a_rollout_and_a_pod_deletion_under_load_fail_no_request(
    cluster: Cluster, namespace: str, real_node_run: RealNodeRun
) -> None:
    body = serving_chaos.manifest("rolled", *real_node_run.args)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    figures = serving_chaos.disrupt(cluster.core, cluster.custom, cluster.api_client, namespace, "rolled")
    print({k: v for k, v in figures.items() if k != "failures"})
    assert figures["failed"] == 0, figures["failures"][:10]
    assert figures["rollout"]["requests"] > 0 and figures["pod_deletion"]["requests"] > 0, figures
    # requests really crossed both events: run 1's two pods, run 2's two, and the deleted one's replacement
    assert len(figures["answered_by_pod"]) >= 5, figures["answered_by_pod"]
