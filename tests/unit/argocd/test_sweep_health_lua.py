"""Runs deploy/argocd/finetunesweep-health.lua in a real Lua 5.1 (Argo CD's gopher-lua implements 5.1)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_health_lua import README, ROOT, health

SCRIPT = ROOT / "deploy" / "argocd" / "finetunesweep-health.lua"
CASES = yaml.safe_load((Path(__file__).parent / "sweep_health_cases.yaml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health(case: dict[str, Any]) -> None:
    assert health(case["obj"], SCRIPT.read_text()) == case["expect"]


def test_every_phase_of_the_crd_is_covered() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "finetunesweep.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    phases = {c["obj"].get("status", {}).get("phase") for c in CASES}
    assert set(status["properties"]["phase"]["enum"]) <= phases


def test_the_readme_snippet_is_the_script() -> None:
    text = README.read_text()
    key = r"resource\.customizations\.health\.finetune\.dev_FineTuneSweep: \|\n((?:    .*\n|\n)+?)```"
    match = re.search(key, text)
    assert match, "README has no argocd-cm snippet for finetune.dev_FineTuneSweep"
    snippet = "\n".join(line[4:] for line in match.group(1).splitlines()).strip()
    assert snippet == SCRIPT.read_text().strip()
