"""The FineTuneSweep CRD stays in step with the FineTuneJob CRD it embeds and with the typed sweep model.

crds/finetunesweep.yaml is generated (hack/gen_sweep_crd.py, run by helm/sync-crd.sh): its spec.template is the
FineTuneJob spec schema, so a template is validated exactly like a FineTuneJob. These tests fail when someone
edits the FineTuneJob CRD without regenerating, or adds a sweepable path that the FineTuneJob spec lacks.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml
from finetune_operator.api.finetunesweep import PARAMETERS, SweepSpec

ROOT = Path(__file__).parents[3]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_sweep_crd", ROOT / "hack" / "gen_sweep_crd.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_sweep_crd"] = module
    spec.loader.exec_module(module)
    return module


def _schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / name).read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_the_sweep_crd_is_what_the_generator_writes() -> None:
    """Fix a difference with helm/sync-crd.sh (it regenerates, then copies both CRDs into the chart)."""
    assert (ROOT / "crds" / "finetunesweep.yaml").read_text() == _generator().render()


def test_the_template_is_the_finetunejob_spec_schema() -> None:
    template = dict(_schema("finetunesweep.yaml")["properties"]["spec"]["properties"]["template"])
    job = dict(_schema("finetunejob.yaml")["properties"]["spec"])
    template.pop("description"), job.pop("description")
    assert template == job


def test_every_sweepable_path_is_a_finetunejob_field_of_its_number_type() -> None:
    spec = _schema("finetunejob.yaml")["properties"]["spec"]
    for path, kind in PARAMETERS.items():
        node = spec
        for part in path.split("."):
            node = node["properties"][part]
        types = [node["type"]] if "type" in node else [branch["type"] for branch in node["anyOf"]]  # int-or-string
        assert {"int": "integer", "float": "number"}[kind] in types, path
    item = _schema("finetunesweep.yaml")["properties"]["spec"]["properties"]["parameters"]["items"]
    assert item["properties"]["path"]["enum"] == list(PARAMETERS)


def test_the_typed_model_has_the_crd_fields() -> None:
    crd = set(_schema("finetunesweep.yaml")["properties"]["spec"]["properties"])
    assert crd == {field.alias or name for name, field in SweepSpec.model_fields.items()}


def test_the_docs_list_every_sweepable_path() -> None:
    text = (ROOT / "docs" / "sweeps.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in text.splitlines()
        if line.startswith("| `hyperparameters.") or line.startswith("| `method.")
    }
    assert rows == PARAMETERS
