"""The chart grants exactly what the FineTuneSweep loop (finetune_operator/finetunesweep/controller.py) calls."""

from __future__ import annotations

from typing import Any

import pytest

from .chart import render


def _grants(role: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        if "finetune.dev" in rule.get("apiGroups", []):
            for resource in rule["resources"]:
                out.setdefault(resource, set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize(
    "values",
    [{}, {"watchNamespaces": "{team-a}"}, {"clusterWide": "true"}],
    ids=["default", "namespaced", "cluster-wide"],
)
def test_sweep_rbac(values: dict[str, str]) -> None:
    docs = render("r", "ops", values)
    role = next(
        d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole") and any("finetune.dev" in r.get("apiGroups", []) for r in d["rules"])
    )
    grants = _grants(role)
    assert grants["finetunesweeps"] == {"list", "watch"}  # kopf's watch (and nothing else: no spec writes)
    assert grants["finetunesweeps/status"] == {"patch"}
    assert grants["finetunesweeps/finalizers"] == {"update"}  # trials' blockOwnerDeletion
    # trials: create-if-absent, get after a raced create, patch (suspend a stopped trial, promote the winner)
    assert {"create", "get", "patch", "list", "watch"} <= grants["finetunejobs"]
    assert "delete" not in grants["finetunejobs"]
