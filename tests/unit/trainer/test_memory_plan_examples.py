"""Every examples/*.yaml asks for a plan that fits the hardware it names, by the memory plan's own estimate.

The GPU an example names is its `nvidia.com/gpu.product` node selector (a GPU feature discovery label);
a GPU example that names none must fit the smallest GPU of the table, and a CPU example (`gpus: 0`) its
pod's memory limit. The base models' config.json are embedded (public configs) and keyed by the model
folder the example points at; a new example with a new base model needs its config here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_trainer.config import parse_config
from finetune_trainer.memory.gpus import Accelerator, accelerator, cpu
from finetune_trainer.memory.plan import default_gpu, plan_config

from .test_examples import EXAMPLES, rendered
from .test_memory_plan import LLAMA3_8B, MINILM_L6, MISTRAL_7B, SMOLLM2_135M

BASE_MODELS: dict[str, dict[str, Any]] = {
    "llama-3-8b": LLAMA3_8B,
    "mistral-7b": MISTRAL_7B,
    "all-minilm-l6-v2": MINILM_L6,
    "smollm2-135m-instruct": SMOLLM2_135M,
    "tiny-llama": SMOLLM2_135M,  # the demo's small base; SmolLM2 is the larger of the two it has used
}
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(value: str | int) -> int:
    text = str(value)
    for suffix, factor in UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def named_hardware(spec: dict[str, Any]) -> Accelerator:
    resources = spec.get("resources", {})
    if resources.get("gpus", 1) == 0:
        return cpu(quantity(resources.get("memory", "32Gi")))
    product = resources.get("nodeSelector", {}).get("nvidia.com/gpu.product")
    if product is None:
        return default_gpu()
    found = accelerator(product)
    assert found is not None, f"{product} is not in finetune_trainer.memory.gpus.GPUS"
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plan_fits_the_hardware_it_names(path: Path) -> None:
    body = next(
        d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") in ("FineTuneJob", "FineTuneSweep")
    )
    spec = body["spec"]["template"] if body["kind"] == "FineTuneSweep" else body["spec"]  # a sweep's trials start there
    cfg = parse_config(rendered(path), path.name)
    folder = cfg.base_model.uri.removeprefix("s3://").rstrip("/").split("/")[-1].lower()  # hf://org/Name too
    assert folder in BASE_MODELS, f"{path.name}: add the config.json of {cfg.base_model.uri} to BASE_MODELS"
    device = named_hardware(spec)
    labels = cfg.base_model.labels
    num_labels = len(labels) if labels else cfg.base_model.num_labels
    result = plan_config(BASE_MODELS[folder], cfg, device, num_labels=num_labels)  # batchSize auto decided
    assert result.fits, f"{path.name}: {result.message()}"
    shorter = plan_config(BASE_MODELS[folder], cfg, device, longest_record=64, num_labels=num_labels)
    assert shorter.total <= result.total  # records known to be short make a smaller plan


def test_the_full_fsdp_example_fits_only_because_it_is_sharded() -> None:
    """examples/full-fsdp.yaml: 4 sequences per micro-batch, 2 accumulated, on each of 8 H100s; the same plan
    under plain DDP is refused with the numbers."""
    path = next(p for p in EXAMPLES if p.name == "full-fsdp.yaml")
    cfg = parse_config(rendered(path), path.name)
    h100 = accelerator("H100-80G")
    assert h100 is not None
    sharded = plan_config(LLAMA3_8B, cfg, h100)
    assert sharded.fits and sharded.setup.sharding == "fsdp" and sharded.setup.world_size == 8
    assert (sharded.setup.micro_batch, sharded.setup.gradient_accumulation) == (4, 2)
    replicated = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"sharding": "none"})})
    assert not plan_config(LLAMA3_8B, replicated, h100).fits
