"""Chaos, nodes: a kwok GPU node stops responding under a running training pod (tests/support/node_loss.py).

What must hold: while the node is lost the run says so and what would free it (reason NodeLost, the pod and the
node named); once the node is deleted (the machine is gone) the Job replaces the pod on the other node and the run
is Training again. No human step in between but the node's deletion, which a cloud's node controller makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Operator
from tests.support.chaos import Components
from tests.support.node_loss import lose_node

pytestmark = pytest.mark.cluster


def test_a_lost_node_is_reported_then_its_pod_replaced(
    cluster: Any, operator_factory: Callable[..., Operator], namespace: str
) -> None:
    if not cluster.local:
        pytest.skip("restarts the local cluster's kwok (hack/cluster.sh); not possible on $KUBECONFIG")
    operator_factory(namespace)
    figures = lose_node(cluster.core, cluster.custom, namespace, Components())
    print(figures)
    assert figures["node"] in figures["node_lost_message"] and "out-of-service" in figures["node_lost_message"]
    assert figures["replaced_before_the_node_was_deleted"] == []  # Kubernetes waits for the node: hence the message
    assert figures["replacement_node"] != figures["node"]
