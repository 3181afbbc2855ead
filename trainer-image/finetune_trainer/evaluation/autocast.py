"""Autocast for evaluation and generation: the device's mixed precision, or nothing.

Why a module of its own: the evaluation loop (`metrics.evaluate`) and generation (`generation.generate`)
run the model outside the Trainer, so neither gets the Trainer's autocast; both wrap their forward passes in
this one context, so they compute in the precision training used. On CPU, or in fp32, it does nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any


def autocast(device: Any, precision: str) -> Any:
    import torch

    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()
