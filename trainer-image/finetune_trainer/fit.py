"""Will the run fit where it is placed? The memory plan of a config against the pod's GPU type or memory.

Why here and not in the operator: the plan needs the base model's config.json and the longest tokenized
record, which only the trainer reads; `validate` (the CPU-only Job before the training Job) runs this, so a
plan that cannot fit fails the run before any GPU is requested. The operator passes where the training pods
will run (GPUs per pod, the GPU product its node selector names, the pod's memory limit) as arguments.

How strict: a named GPU product (`nvidia.com/gpu.product` in the node selector) or a CPU pod's memory limit
is a budget the run must fit. With no GPU type named the plan is shown against the largest GPU in the table
and refused only when even that cannot hold it (an 8B full fine-tune under plain DDP): a smaller GPU might
be what the scheduler picks, but refusing every run that names no type would refuse runs that fit.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import ConfigInvalid, PlanDoesNotFit
from finetune_trainer.gpus import GPUS, Accelerator, accelerator, cpu
from finetune_trainer.memory_plan import MemoryPlan, UnsupportedModel, plan, setup_of

log = logging.getLogger(__name__)

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][0-9]+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
}


def parse_quantity(text: str) -> int:
    """Bytes of a Kubernetes memory quantity ("16Gi", "512Mi", "8G", "1e9")."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ConfigInvalid(f"resources.memory: {text!r} is not a Kubernetes quantity such as 16Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class Placement:
    """Where the training pods will run, as the operator renders it for `validate`."""

    gpus: int = 0
    gpu_product: str = ""
    memory_limit: str = ""


@dataclass(frozen=True)
class Budget:
    device: Accelerator
    strict: bool  # False: no GPU type named, checked against the largest known GPU only


def budget_of(placement: Placement) -> Budget | None:
    """The device memory each training process gets (None: a CPU pod without a memory limit)."""
    if placement.gpus <= 0:
        return Budget(cpu(parse_quantity(placement.memory_limit)), True) if placement.memory_limit else None
    named = accelerator(placement.gpu_product) if placement.gpu_product else None
    if named is not None:
        return Budget(named, True)
    largest = max(GPUS.values(), key=lambda a: a.memory_bytes)
    unnamed = Accelerator(f"unnamed GPU type (largest known: {largest.name})", largest.memory_bytes, largest.bf16)
    return Budget(unnamed, False)


def check_fit(
    cfg: TrainerConfig, model_folder: Path, longest_record: int, labels: list[str] | None, placement: Placement
) -> MemoryPlan | None:
    """The run's memory plan; raises PlanDoesNotFit when it cannot fit its budget. None when there is no
    budget or the model's architecture is one the plan does not know (said in the log)."""
    budget = budget_of(placement)
    if budget is None:
        return None
    config = json.loads((model_folder / "config.json").read_text())
    setup = setup_of(cfg, longest_record=longest_record)
    try:
        result = plan(config, setup, budget.device, num_labels=len(labels) if labels else None)
    except UnsupportedModel as error:
        log.warning("no memory plan: %s", error)
        return None
    log.info("memory plan: %s", result.message())
    if not result.fits:
        where = "the GPU type it names" if budget.strict else "any GPU in the table"
        raise PlanDoesNotFit(f"the run cannot fit {where}: {result.message()}")
    return result
