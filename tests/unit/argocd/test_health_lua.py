"""Runs deploy/argocd/finetunejob-health.lua in a real Lua 5.1 (what Argo CD's gopher-lua implements).

Why a real interpreter: a health check is code Argo CD runs on every refresh; a typo or a nil index turns
every FineTuneJob "Unknown" in the UI. The fixtures are statuses in the shape the operator writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

ROOT = Path(__file__).parents[3]
SCRIPT = ROOT / "deploy" / "argocd" / "finetunejob-health.lua"
README = ROOT / "deploy" / "argocd" / "README.md"
CASES = yaml.safe_load((Path(__file__).parent / "health_cases.yaml").read_text())


def to_lua(runtime: Any, value: Any) -> Any:
    """JSON-like Python to Lua tables, lists 1-based, as Argo CD converts an object for its Lua VM."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any], script: str | None = None) -> dict[str, Any]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(script if script is not None else SCRIPT.read_text())
    return dict(result.items())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health(case: dict[str, Any]) -> None:
    assert health(case["obj"]) == case["expect"]


def test_every_phase_of_the_crd_is_covered() -> None:
    """A phase added to the CRD's enum must get a fixture (and a deliberate mapping)."""
    crd = yaml.safe_load((ROOT / "crds" / "finetunejob.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    phases = {c["obj"].get("status", {}).get("phase") for c in CASES}
    assert set(status["properties"]["phase"]["enum"]) <= phases


def test_the_readme_snippet_is_the_script() -> None:
    """The argocd-cm snippet users copy must be exactly the tested script (indented under the key)."""
    text = README.read_text()
    match = re.search(r"resource\.customizations\.health\.finetune\.dev_FineTuneJob: \|\n((?:    .*\n|\n)+?)```", text)
    assert match, "README has no argocd-cm snippet for finetune.dev_FineTuneJob"
    snippet = "\n".join(line[4:] for line in match.group(1).splitlines()).strip()
    assert snippet == SCRIPT.read_text().strip()
    case = next(c for c in CASES if c["expect"]["status"] == "Degraded")
    assert health(case["obj"], snippet) == case["expect"]
