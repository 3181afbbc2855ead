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
from finetune_trainer.core.errors import ConfigInvalid, PlanDoesNotFit
from finetune_trainer.memory.gpus import GPUS, Accelerator, accelerator, cpu, with_overrides
from finetune_trainer.memory.plan import MemoryPlan, plan_config
from finetune_trainer.memory.shapes import UnsupportedModel

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
    gpu_memory: tuple[str, ...] = ()
    """NAME=QUANTITY entries that replace or add GPU table rows (the chart's validation.gpuMemory): a MIG
    slice, a GPU the table lacks, a reserve kept back from the device's total."""
    disk_limit: str = ""
    """The training pods' local disk as the job asked for it (resources.ephemeralStorage); '' when it did not
    (the data check's disk plan then decides it, memory/disk.py)."""


@dataclass(frozen=True)
class Budget:
    device: Accelerator
    strict: bool  # False: no GPU type named, checked against the largest known GPU only


def gpu_table(entries: tuple[str, ...]) -> dict[str, Accelerator]:
    """The GPU table with the NAME=QUANTITY entries (`--gpu-memory`) applied; a bad entry is ConfigInvalid."""
    overrides = {}
    for entry in entries:
        name, sep, quantity = entry.partition("=")
        if not sep or not name.strip():
            raise ConfigInvalid(f"--gpu-memory: {entry!r} is not NAME=QUANTITY (e.g. H100-80G=80Gi)")
        try:
            overrides[name.strip()] = parse_quantity(quantity)
        except ConfigInvalid:
            raise ConfigInvalid(f"--gpu-memory: {entry!r}: {quantity!r} is not a quantity such as 40Gi") from None
    return with_overrides(overrides)


def budget_of(placement: Placement) -> Budget | None:
    """The device memory each training process gets (None: a CPU pod without a memory limit)."""
    if placement.gpus <= 0:
        return Budget(cpu(parse_quantity(placement.memory_limit)), True) if placement.memory_limit else None
    table = gpu_table(placement.gpu_memory) if placement.gpu_memory else GPUS
    named = accelerator(placement.gpu_product, table) if placement.gpu_product else None
    if named is not None:
        return Budget(named, True)
    largest = max(table.values(), key=lambda a: a.memory_bytes)
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
    try:
        num_labels = len(labels) if labels else None
        result = plan_config(config, cfg, budget.device, longest_record=longest_record, num_labels=num_labels)
    except UnsupportedModel as error:
        log.warning("no memory plan: %s", error)
        return None
    log.info("memory plan: %s", result.message())
    if not result.fits:
        where = "the GPU type it names" if budget.strict else "any GPU in the table"
        raise PlanDoesNotFit(f"the run cannot fit {where}: {result.message()}")
    return result


MEMORY_LIMIT_ENV = "FTO_MEMORY_LIMIT"
"""A CPU run's memory budget (a Kubernetes quantity) where the container's cgroup limit is not readable."""


def parse_memory_max(text: str) -> int | None:
    """Bytes of a cgroup v2 `memory.max` or v1 `memory.limit_in_bytes`; None when unlimited ("max", or v1's
    page-rounded 2^63)."""
    value = text.strip()
    if not value or value == "max":
        return None
    limit = int(value)
    return None if limit >= 1 << 62 else limit


def cpu_memory_budget(environ: dict[str, str], cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The memory a CPU training pod may use: FTO_MEMORY_LIMIT, else the cgroup's limit, else the host's RAM."""
    explicit = environ.get(MEMORY_LIMIT_ENV, "").strip()
    if explicit:
        return parse_quantity(explicit)
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            limit = parse_memory_max((cgroup_root / name).read_text())
        except (OSError, ValueError):
            continue
        if limit is not None:
            return limit
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def runtime_device(cuda: bool, local_processes: int, environ: dict[str, str]) -> Accelerator:
    """The device this training process runs on, as the memory plan sees it: the GPU it was given (its name
    and total memory as torch reports them), or its share of the pod's memory on CPU."""
    if not cuda:
        return cpu(cpu_memory_budget(environ) // max(1, local_processes))
    import torch

    from finetune_trainer.core import distributed

    properties = torch.cuda.get_device_properties(distributed.local_rank())
    known = accelerator(properties.name)
    bf16 = known.bf16 if known else bool(torch.cuda.is_bf16_supported())
    return Accelerator(name=properties.name, memory_bytes=int(properties.total_memory), bf16=bf16)


def decide_for_device(
    cfg: TrainerConfig, model_folder: Path, longest_record: int, labels: list[str] | None, device: Accelerator
) -> TrainerConfig:
    """`cfg` with `batchSize: auto` and an unset `gradientCheckpointing` decided for the device this process
    really has (the validation step only knew the GPU type the spec names). A config with both set is
    returned as it is; a plan over the device's memory is logged, not refused: the estimate may err, and the
    validation step refused what it could before a GPU was taken."""
    hp = cfg.hyperparameters
    if hp.batch_size != "auto" and hp.gradient_checkpointing is not None:
        return cfg
    try:
        config = json.loads((model_folder / "config.json").read_text())
        num_labels = len(labels) if labels else None
        result = plan_config(config, cfg, device, longest_record=longest_record, num_labels=num_labels)
    except (UnsupportedModel, OSError, ValueError) as error:
        log.warning("no memory plan (%s): batchSize auto is 1 per micro-batch, gradient checkpointing on", error)
        sequences = cfg.sequences_per_process()
        auto = hp.batch_size == "auto"
        batch = 1 if auto else int(hp.batch_size)
        accumulation = sequences if auto else hp.gradient_accumulation_steps
        return cfg.with_batch(batch, accumulation, hp.gradient_checkpointing is not False)
    log.info("memory plan on this device: %s", result.message())
    if not result.fits:
        log.warning("the plan is over this device's memory: training may run out of memory")
    s = result.setup
    return cfg.with_batch(s.micro_batch, s.gradient_accumulation, s.gradient_checkpointing)
