"""Runs deploy/argocd/modelserver-health.lua in a real Lua 5.1 (Argo CD's gopher-lua dialect) over ModelServer
statuses in the shape operator/finetune_operator/modelserver/controller.py writes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .test_health_lua import README, ROOT, health

SCRIPT = ROOT / "deploy" / "argocd" / "modelserver-health.lua"


def _status(ready: str, converged: str, reason: str = "Ready", **extra: Any) -> dict[str, Any]:
    return {
        "observedGeneration": 1,
        "replicas": 2,
        "readyReplicas": 2 if ready == "True" else 0,
        "adapterCount": 3,
        "capacityLeft": 5,
        "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "message": "2 of 2 replicas ready"},
            {"type": "Converged", "status": converged, "reason": "x", "message": "y"},
        ],
        **extra,
    }


CASES = [
    ({}, "Progressing", "Waiting for the operator to reconcile the ModelServer"),
    ({"status": {**_status("True", "True"), "observedGeneration": 0}}, "Progressing", "observe generation 1"),
    ({"status": _status("True", "True")}, "Healthy", "3 adapters, 2/2 replicas ready, 5 free"),
    ({"status": _status("True", "False")}, "Progressing", "Converging: 3 adapters"),
    ({"status": _status("False", "False", "NoReplicaReady")}, "Progressing", "No replica ready"),
    ({"status": _status("False", "False", "ConfigInvalid")}, "Degraded", "ConfigInvalid"),
]


@pytest.mark.parametrize(("extra", "expected", "words"), CASES, ids=[c[1] + "-" + c[2][:20] for c in CASES])
def test_health(extra: dict[str, Any], expected: str, words: str) -> None:
    obj = {"metadata": {"name": "shared", "generation": 1}, "spec": {}, **extra}
    result = health(obj, SCRIPT.read_text())
    assert result["status"] == expected and words in result["message"], result


def test_the_readme_snippet_is_the_script() -> None:
    text = README.read_text()
    match = re.search(r"resource\.customizations\.health\.finetune\.dev_ModelServer: \|\n((?:    .*\n|\n)+?)```", text)
    assert match, "README has no argocd-cm snippet for finetune.dev_ModelServer"
    snippet = "\n".join(line[4:] for line in match.group(1).splitlines()).strip()
    assert snippet == SCRIPT.read_text().strip()
