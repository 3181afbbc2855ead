"""Process-group helpers: which rank am I, and wait for the others.

Why a module of its own: the trainer runs as one process or under torchrun (several GPUs, several pods,
or gloo on CPU in tests), and a few steps (downloads, uploads, the completion marker, the SIGTERM
decision) must be done by one rank while the others wait. These helpers are no-ops in a single process,
so the same code path runs everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def is_local_main() -> bool:
    return local_rank() == 0


def node_rank() -> int:
    """Which node (pod) of a multi-node run this is; torchrun calls it GROUP_RANK. 0 outside torchrun."""
    return int(os.environ.get("GROUP_RANK", "0"))


def init() -> None:
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPU); a no-op for one process."""
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def _group_ready() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return bool(dist.is_initialized())


def barrier() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def local_main_first() -> Iterator[None]:
    """The first process on each node runs the block first (e.g. downloads to the node's disk); the others
    wait for it, then run the block and find its files there.

    The idiom of transformers' `TrainingArguments.main_process_first(local=True)`, usable before the
    TrainingArguments exist. Not accelerate's `PartialState().local_main_process_first()`: without `cpu=True`
    it takes a gloo group on a CPU-only node for no distribution at all, and the wait would silently vanish.
    """
    try:
        if not is_local_main():
            barrier()
        yield
    finally:
        if is_local_main():
            barrier()


def _device() -> Any:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (one all-reduce of a single number)."""
    if not _group_ready():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sum of a short vector over all ranks (evaluation counters)."""
    if not _group_ready():
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def shutdown() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.destroy_process_group()
