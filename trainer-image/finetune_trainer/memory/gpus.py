"""The accelerators a memory plan is checked against: one table, name -> usable memory, in one place.

Why a table: a plan that cannot fit should be refused before a GPU is requested, and the operator only
knows the GPU type from the spec (a `nvidia.com/gpu.product` node selector) or from its own settings, never
from the device. `memory_bytes` is what the device reports as its total (`nvidia-smi`, torch's
`total_memory`), not the marketing figure: an "80 GB" H100 reports 81559 MiB. What the CUDA context and the
allocator take from it is the memory plan's `overhead`, not subtracted here. `bf16` says whether `precision:
auto` resolves to bf16 (Ampere and newer) or fp16 (T4, V100), as `modeling.choose_precision` does.

The table is a default: `with_overrides` takes the chart's or operator's own entries (a new GPU, a MIG
slice, a different reserve) and `cpu(limit)` makes the budget of a CPU run from the pod's memory limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Accelerator:
    """One device a training process runs on: its name, the memory it has, whether it computes in bf16."""

    name: str
    memory_bytes: int
    bf16: bool
    kind: Literal["gpu", "cpu"] = "gpu"
    peak_tflops: float | None = None
    """Dense tensor-core peak in the `precision: auto` dtype (bf16, or fp16 where there is no bf16), TFLOP/s,
    from the vendor's spec sheet (without sparsity): the denominator of MFU (bench/gpu_check.sh)."""


def _gpu(name: str, mib: int, tflops: float, bf16: bool = True) -> tuple[str, Accelerator]:
    return name, Accelerator(name=name, memory_bytes=mib * MiB, bf16=bf16, peak_tflops=tflops)


GPUS: Mapping[str, Accelerator] = MappingProxyType(
    dict(
        [
            _gpu("T4", 15360, 65.0, bf16=False),
            _gpu("V100-16G", 16160, 125.0, bf16=False),
            _gpu("V100-32G", 32768, 125.0, bf16=False),
            _gpu("A10G", 23028, 70.0),
            _gpu("A10", 23028, 125.0),
            _gpu("L4", 23034, 121.0),
            _gpu("L40S", 46068, 362.0),
            _gpu("A100-40G", 40960, 312.0),
            _gpu("A100-80G", 81920, 312.0),
            _gpu("H100-80G", 81559, 989.0),
            _gpu("H100-94G", 95830, 835.0),
            _gpu("H200-141G", 143771, 989.0),
            _gpu("B200", 183359, 2250.0),
            _gpu("MI300X", 196592, 1307.0),
        ]
    )
)
"""Common GPUs by short name; memory as the device reports it (MiB from nvidia-smi / rocm-smi)."""

PRODUCT_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"H200", "H200-141G"),
    (r"H100.*NVL", "H100-94G"),
    (r"H100", "H100-80G"),
    (r"A100.*80G", "A100-80G"),
    (r"A100", "A100-40G"),
    (r"B200", "B200"),
    (r"L40S", "L40S"),
    (r"A10G", "A10G"),
    (r"A10\b|A10$", "A10"),
    (r"L4\b|L4$", "L4"),
    (r"T4\b|T4$", "T4"),
    (r"V100.*32G", "V100-32G"),
    (r"V100", "V100-16G"),
    (r"MI300X", "MI300X"),
)
"""Node-label product names (GPU feature discovery's `nvidia.com/gpu.product`, e.g. NVIDIA-A100-SXM4-80GB,
Tesla-T4) to table names, first match wins; table names themselves also match."""


def accelerator(name: str, table: Mapping[str, Accelerator] = GPUS) -> Accelerator | None:
    """The table's entry for a short name (`A100-80G`) or a product label (`NVIDIA-A100-SXM4-80GB`)."""
    if name in table:
        return table[name]
    label = name.upper().replace("_", "-")
    for pattern, key in PRODUCT_PATTERNS:
        if re.search(pattern, label) and key in table:
            return table[key]
    return None


def with_overrides(overrides: Mapping[str, int], table: Mapping[str, Accelerator] = GPUS) -> dict[str, Accelerator]:
    """The table with entries replaced or added (name -> memory bytes), e.g. from the chart's values."""
    merged = dict(table)
    for name, memory in overrides.items():
        old = merged.get(name)
        merged[name] = Accelerator(
            name=name, memory_bytes=memory, bf16=old.bf16 if old else True, peak_tflops=old.peak_tflops if old else None
        )
    return merged


def cpu(memory_limit_bytes: int) -> Accelerator:
    """A CPU run's budget: the pod's memory limit (the trainer computes in fp32 there)."""
    return Accelerator(name="cpu", memory_bytes=memory_limit_bytes, bf16=False, kind="cpu")
