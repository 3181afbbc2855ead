"""Every examples/*.yaml, rendered by the operator's own conversion, is a config the trainer accepts and
runs the way the example intends (hardware check, multi-process launch, classification labels).

tests/unit/operator/test_trainer_contract.py checks that the rendering parses; this adds the trainer's decisions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_trainer.config import TrainerConfig, parse_config
from finetune_trainer.core.errors import UnsupportedHardware
from finetune_trainer.training.launch import needs_launch
from finetune_trainer.training.modeling import Hardware, check_method, choose_precision

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml"))
CPU = Hardware(cuda=False, bf16=False, bitsandbytes=False)
GPU = Hardware(cuda=True, bf16=True, bitsandbytes=True)


def rendered(path: Path) -> dict[str, Any]:
    from finetune_operator.api.finetunejob import parse_spec
    from finetune_operator.api.objects import Owner
    from finetune_operator.builders.trainer_config import trainer_config_map

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    body = next(d for d in docs if d.get("kind") in ("FineTuneJob", "FineTuneSweep"))
    body = {**body, "spec": body["spec"]["template"]} if body["kind"] == "FineTuneSweep" else body  # a trial's start
    owner = Owner(body["metadata"].get("namespace", "team-a"), body["metadata"]["name"], "uid-1")
    config_map = trainer_config_map(parse_spec(body["spec"]), owner, 4)
    document: dict[str, Any] = json.loads(config_map["data"]["config.json"])
    return document


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_is_accepted_and_consistent(path: Path) -> None:
    raw = rendered(path)
    config: TrainerConfig = parse_config(raw, path.name)
    assert config.job.run == 4 and config.output.run_uri.endswith("/run-4/")
    assert parse_config(json.loads(config.to_json())) == config  # the resolved config round-trips
    check_method(config, GPU)
    if config.method.type == "qlora":
        with pytest.raises(UnsupportedHardware):
            check_method(config, CPU)
    else:
        check_method(config, CPU)
        choose_precision(config.hyperparameters.precision, GPU)
    processes = config.distributed.workers * config.distributed.processes_per_worker
    assert needs_launch(raw, {}) == (processes > 1)
    if config.base_model.task == "sequence-classification":
        assert config.dataset.schema_ == "classification"
