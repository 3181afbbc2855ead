"""A CUDA out-of-memory raised anywhere in the trainer leaves as `OutOfMemory` with the user-error exit code (42):
the Job's podFailurePolicy then fails the run at once (no identical retry), and the operator reports it as it
reports a container the kernel killed (OOMKilled), with the memory plan beside it."""

from __future__ import annotations

import torch
from finetune_trainer.core.errors import (
    USER_ERROR_CODES,
    USER_ERROR_EXIT_CODE,
    InternalError,
    OutOfMemory,
    as_trainer_error,
    is_gpu_out_of_memory,
)


def test_torch_cuda_out_of_memory_is_out_of_memory_exit_42() -> None:
    raised = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 22.0 GiB total)")
    failure = as_trainer_error(raised)
    assert isinstance(failure, OutOfMemory) and failure.code == "OutOfMemory"
    assert failure.exit_code == USER_ERROR_EXIT_CODE and "OutOfMemory" in USER_ERROR_CODES
    assert "Tried to allocate 2.00 GiB" in failure.message


def test_an_older_torchs_runtime_error_is_recognised_and_other_errors_are_not() -> None:
    assert is_gpu_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert not is_gpu_out_of_memory(RuntimeError("NCCL error: unhandled system error"))
    assert not is_gpu_out_of_memory(MemoryError())  # host memory inside Python: the kernel's OOM kill reports that
    assert isinstance(as_trainer_error(RuntimeError("shape mismatch")), InternalError)
