"""The operator's renderings pass the trainer's and server's own validators (docs/trainer-contract.md).

Both sides live in this repository, so the contract is checked directly: every example's trainer config
must parse with `finetune_trainer.config.parse_config`, every serve.json with the server's model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_operator.api.finetunejob import parse_spec
from finetune_operator.builders.serving import Published, serving_config_map
from finetune_operator.builders.trainer_config import trainer_config_map
from finetune_trainer.config import parse_config
from finetune_trainer.serving.server.config import ServeConfig
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .support import EXAMPLES, OWNER, example


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_trainer_accepts_the_rendered_config(path: Path) -> None:
    spec = parse_spec(example(path.stem)["spec"])
    rendered = json.loads(trainer_config_map(spec, OWNER, 3)["data"]["config.json"])
    config = parse_config(rendered, "operator rendering")
    assert config.job.run == 3 and config.output.run_uri.endswith("/run-3/")


def test_trainer_accepts_batch_size_auto_checkpointing_and_fsdp_as_rendered() -> None:
    raw = example("distributed")["spec"]
    spec = parse_spec(
        {
            **raw,
            "method": {"type": "full"},
            "hyperparameters": {"batchSize": "auto", "effectiveBatchSize": 512, "gradientCheckpointing": True},
            "distributed": {**raw.get("distributed", {}), "sharding": "fsdp"},
        }
    )
    config = parse_config(json.loads(trainer_config_map(spec, OWNER, 1)["data"]["config.json"]), "operator rendering")
    hp = config.hyperparameters
    assert hp.batch_size == "auto" and hp.effective_batch_size == 512 and hp.gradient_checkpointing is True
    assert config.distributed.sharding == "fsdp" and config.world_size == spec.distributed.workers * spec.resources.gpus


def test_trainer_accepts_the_dpo_method_as_rendered_and_sft_renders_as_before() -> None:
    raw = example("quickstart")["spec"]
    method = {"type": "lora", "objective": "dpo", "dpo": {"beta": 0.2, "lossType": "ipo"}}
    preference = {**raw["dataset"], "schema": "openai-preference"}
    # the quickstart's answer scores need chat data: a preference run is gated on its own test metrics
    spec = parse_spec({**raw, "method": method, "dataset": preference, "evaluation": {"compareBaseModel": True}})
    rendered = json.loads(trainer_config_map(spec, OWNER, 1)["data"]["config.json"])
    config = parse_config(rendered, "operator rendering").method
    assert config.objective == "dpo" and config.dpo_settings.beta == 0.2 and config.dpo_settings.loss_type == "ipo"
    plain = json.loads(trainer_config_map(parse_spec(raw), OWNER, 1)["data"]["config.json"])["method"]
    assert "objective" not in plain and "dpo" not in plain  # a job that sets neither renders as before


def test_trainer_accepts_the_simpo_method_as_rendered() -> None:
    raw = example("quickstart")["spec"]
    preference = {**raw["dataset"], "schema": "preference"}
    for method, expected in [
        ({"type": "lora", "objective": "simpo", "simpo": {"beta": 2.5, "gamma": 1.0, "labelSmoothing": 0.1}},
         (2.5, 1.0, 0.1)),
        ({"type": "full", "objective": "simpo"}, (2.0, 0.5, 0.0)),  # the defaults when simpo is left out
    ]:  # fmt: skip
        spec = parse_spec({**raw, "method": method, "dataset": preference, "evaluation": {}})
        rendered = json.loads(trainer_config_map(spec, OWNER, 1)["data"]["config.json"])
        config = parse_config(rendered, "operator rendering").method
        settings = config.preference_settings
        assert config.objective == "simpo" and config.pairs and "dpo" not in rendered["method"]
        assert (settings.beta, settings.gamma, settings.label_smoothing) == expected  # type: ignore[union-attr]


def test_trainer_accepts_the_evaluation_fields_as_rendered() -> None:
    raw = example("quickstart")["spec"]
    evaluation = {
        "intervalSteps": 10,
        "earlyStopping": {"patience": 2, "minDelta": 0.01},
        "generation": {"maxSamples": 8, "maxNewTokens": 32, "regex": "[0-9]+", "jsonValid": True},
        "gate": [{"metric": "test_exact_match", "min": 0.5}],
    }
    spec = parse_spec({**raw, "evaluation": evaluation})
    rendered = json.loads(trainer_config_map(spec, OWNER, 1)["data"]["config.json"])
    assert "gate" not in rendered["evaluation"]  # the operator's to judge
    config = parse_config(rendered, "operator rendering").evaluation
    assert config.interval_steps == 10 and config.early_stopping is not None and config.early_stopping.min_delta == 0.01
    assert config.generation is not None and config.generation.regex == "[0-9]+" and config.generation.json_valid
    bare = {**raw, "evaluation": {"compareBaseModel": True, "gate": [{"metric": "test_loss", "max": 1.0}]}}
    plain = json.loads(trainer_config_map(parse_spec(bare), OWNER, 1)["data"]["config.json"])
    assert set(plain["evaluation"]) == {"compareBaseModel"}  # nothing set: rendered as before


@pytest.mark.parametrize("adapter", [True, False])
def test_server_accepts_the_rendered_serve_config(adapter: bool) -> None:
    spec = parse_spec(example("quickstart")["spec"])
    published = Published(2, "causal-lm", spec.base_model.uri, spec.output.run_uri(2) + "model/", adapter)
    rendered = json.loads(serving_config_map(spec, OWNER, published)["data"]["serve.json"])
    served = ServeConfig.model_validate(rendered)
    assert served.run == 2


def _default(field: FieldInfo) -> object:
    if field.is_required():
        return "(required)"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    return value.model_dump() if isinstance(value, BaseModel) else value


def test_the_operator_and_the_trainer_model_each_shared_section_alike() -> None:
    """Where both packages model a section of the spec, the classes share a name, and every field they share
    has the same default on both sides: the operator must never render a config whose omitted fields the
    trainer fills in differently from what the operator assumed."""
    import finetune_operator.api.finetunejob as operator_spec
    import finetune_trainer.config as trainer_config

    shared = {
        name
        for name, value in vars(operator_spec).items()
        if isinstance(value, type) and issubclass(value, BaseModel) and name in vars(trainer_config)
    }
    assert {"DatasetSpec", "SplitSpec", "MethodSpec", "LoraSpec", "Hyperparameters", "OutputSpec"} <= shared
    differences = []
    for name in sorted(shared - {"_Model"}):
        ours, theirs = getattr(operator_spec, name).model_fields, getattr(trainer_config, name).model_fields
        for field in sorted(ours.keys() & theirs.keys()):
            if _default(ours[field]) != _default(theirs[field]):
                differences.append(f"{name}.{field}: {_default(ours[field])!r} vs {_default(theirs[field])!r}")
    assert not differences, differences


def test_trainer_accepts_a_base_adapter_as_rendered_and_a_job_without_one_renders_as_before() -> None:
    raw = example("quickstart")["spec"]
    adapter = "s3://artifacts/team-a/sft/run-1/model/"
    spec = parse_spec(
        {**raw, "baseModel": {**raw["baseModel"], "adapter": adapter}, "method": {"type": "lora", "mergeWeights": True}}
    )
    rendered = json.loads(trainer_config_map(spec, OWNER, 1)["data"]["config.json"])
    assert parse_config(rendered, "operator rendering").base_model.adapter == adapter
    plain = json.loads(trainer_config_map(parse_spec(raw), OWNER, 1)["data"]["config.json"])["baseModel"]
    assert "adapter" not in plain
