"""Golden YAML of every builder, for every example and for edge shapes (long name, distributed, vllm)."""

from __future__ import annotations

import pytest
from finetune_operator.api.finetunejob import parse_spec, training_spec_hash
from finetune_operator.api.objects import Owner
from finetune_operator.builders.rbac import progress_config_map, trainer_rbac
from finetune_operator.builders.serving import Published, serving_bundle
from finetune_operator.builders.trainer_config import trainer_config_map
from finetune_operator.builders.training import training_job, workers_service
from finetune_operator.core.settings import Settings

from .support import OWNER, assert_golden, example

SETTINGS = Settings(trainer_image="registry.local/finetune-trainer:test")
EXAMPLE_NAMES = ["quickstart", "classification", "qlora-gpu", "distributed", "kueue"]
LONG = Owner("team-a", "a." + "very-long-name." * 16 + "x", "9d0c3c3e-aaaa-4bbb-8ccc-ddddeeeeffff")


def _published(name: str, adapter: bool = True) -> Published:
    spec = parse_spec(example(name)["spec"])
    return Published(
        run=2,
        task=spec.base_model.task,
        base_model_uri=spec.base_model.uri,
        model_uri=spec.output.run_uri(2) + "model/",
        adapter=adapter,
        lora_rank=spec.method.lora.rank,
    )


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_training_children_match_golden(name: str) -> None:
    spec = parse_spec(example(name)["spec"])
    digest = training_spec_hash(spec)
    assert_golden(f"{name}/trainer-configmap.yaml", trainer_config_map(spec, OWNER, 2))
    assert_golden(f"{name}/job.yaml", training_job(spec, OWNER, 2, digest, SETTINGS))
    if spec.distributed.workers > 1:
        assert_golden(f"{name}/workers-service.yaml", workers_service(spec, OWNER, 2))


def test_rbac_matches_golden() -> None:
    assert_golden("rbac.yaml", trainer_rbac(OWNER))
    assert_golden("progress-configmap.yaml", progress_config_map(OWNER))


@pytest.mark.parametrize("name", ["quickstart", "classification", "qlora-gpu"])
def test_serving_bundle_matches_golden(name: str) -> None:
    spec = parse_spec(example(name)["spec"])
    assert_golden(f"{name}/serving.yaml", serving_bundle(spec, OWNER, _published(name), SETTINGS))


def test_vllm_full_weights_serving_matches_golden() -> None:
    spec = parse_spec(example("qlora-gpu")["spec"])
    assert_golden(
        "qlora-gpu/serving-merged.yaml",
        serving_bundle(spec, OWNER, _published("qlora-gpu", adapter=False), SETTINGS),
    )


def test_vllm_cpu_serving_matches_golden() -> None:
    """The quickstart served by vLLM's CPU build (--vllm-device cpu), as the e2e test runs it on the real node."""
    raw = example("quickstart")["spec"]
    spec = parse_spec({**raw, "serving": {**raw.get("serving", {}), "engine": "vllm"}})
    settings = Settings(
        trainer_image="registry.local/finetune-trainer:test",
        vllm_image="registry.local/vllm-cpu:test",
        vllm_device="cpu",
    )
    assert_golden("quickstart/serving-vllm-cpu.yaml", serving_bundle(spec, OWNER, _published("quickstart"), settings))


def test_long_name_children_match_golden() -> None:
    spec = parse_spec(example("distributed")["spec"])
    assert_golden("long-name/job.yaml", training_job(spec, LONG, 12, "0123456789abcdef", SETTINGS))
    assert_golden("long-name/workers-service.yaml", workers_service(spec, LONG, 12))
    assert_golden("long-name/rbac.yaml", trainer_rbac(LONG))
