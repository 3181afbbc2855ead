"""The trainer's error hierarchy: every failure the operator must tell apart carries its contract code.

Why: the operator decides between "fail the job at once" (exit 42, a user error: retrying cannot help),
"retry and resume" (exit 75, preempted) and "retry up to the backoff limit" (anything else) only from the
exit code and the `code` of the termination message (docs/trainer-contract.md section 3). Raising one of
these classes anywhere in the trainer is the single way to choose that outcome; the entry point maps any
other exception to `InternalError` / exit 1.
"""

from __future__ import annotations

import errno
from typing import ClassVar

USER_ERROR_EXIT_CODE = 42
"""Permanent user error: the Job's podFailurePolicy fails the job without burning retries."""

PREEMPTED_EXIT_CODE = 75
"""Stopped by SIGTERM after a checkpoint was written: retryable, the next pod resumes."""

INTERNAL_ERROR_EXIT_CODE = 1
"""A crash the trainer did not classify: retryable up to the Job's backoff limit."""


class TrainerError(Exception):
    """Base class: a failure with a contract `code`, an exit code and a message meant for the user."""

    code: ClassVar[str] = "InternalError"
    exit_code: ClassVar[int] = INTERNAL_ERROR_EXIT_CODE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(TrainerError):
    """A permanent error caused by the job's inputs (config, data, model, storage access): exit 42."""

    code: ClassVar[str] = "UserError"
    exit_code: ClassVar[int] = USER_ERROR_EXIT_CODE


class ConfigInvalid(UserError):
    """The trainer config does not validate (every error listed with its field path)."""

    code: ClassVar[str] = "ConfigInvalid"


class DatasetInvalid(UserError):
    """The data exists but cannot be used: malformed line, missing column, empty split, unknown label."""

    code: ClassVar[str] = "DatasetInvalid"


class DatasetNotFound(UserError):
    """No data file under the given URI (an existing bucket, but no matching objects)."""

    code: ClassVar[str] = "DatasetNotFound"


class ModelInvalid(UserError):
    """The base model folder exists but is not a loadable Hugging Face model (config, tokenizer, weights)."""

    code: ClassVar[str] = "ModelInvalid"


class ModelNotFound(UserError):
    """No objects under the base model URI."""

    code: ClassVar[str] = "ModelNotFound"


class StorageAccessDenied(UserError):
    """The object store refused the credentials (wrong key, wrong secret, no permission)."""

    code: ClassVar[str] = "StorageAccessDenied"


class StorageNotFound(UserError):
    """The bucket or the key does not exist."""

    code: ClassVar[str] = "StorageNotFound"


class ObjectCorrupt(UserError):
    """An object does not match its recorded checksum or size (core/integrity.py) after one more download: it is
    corrupt or truncated in storage, so another attempt would read the same bytes. The message names the bucket
    and key. A corrupt checkpoint is not this error: the trainer resumes from the previous complete one."""

    code: ClassVar[str] = "ObjectCorrupt"


class HubAccessDenied(UserError):
    """The model hub refused the repo (401/403: a gated or private repo without a token, or with a wrong one)."""

    code: ClassVar[str] = "HubAccessDenied"


class DiskRequestTooSmall(UserError):
    """What the training pod must download (the base model and the data, as the hub lists them) is larger than
    the local disk the job asked for (resources.ephemeralStorage): the pod would be evicted on every attempt."""

    code: ClassVar[str] = "DiskRequestTooSmall"


class UnsafeObjectKey(UserError):
    """An object key under a prefix that is no safe relative path (`..`, `.` or empty segments, absolute,
    backslash, NUL), or a local path that would leave its folder: refused, never skipped (core/paths.py)."""

    code: ClassVar[str] = "UnsafeObjectKey"


class UnsupportedHardware(UserError):
    """The requested method needs hardware the pod lacks (QLoRA without a CUDA GPU or bitsandbytes)."""

    code: ClassVar[str] = "UnsupportedHardware"


class PlanDoesNotFit(UserError):
    """The memory plan of the run exceeds the memory of the GPU (or CPU pod) it is placed on."""

    code: ClassVar[str] = "PlanDoesNotFit"


class OutOfMemory(UserError):
    """The GPU ran out of memory during the run (torch.cuda.OutOfMemoryError): exit 42, since the same run on the
    same memory fails the same way. The operator reports it as `OutOfMemory` beside the memory plan and the
    changes that would fit, as it does a container the kernel killed (OOMKilled, exit 137)."""

    code: ClassVar[str] = "OutOfMemory"


def is_gpu_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA out-of-memory error, recognised by its type's name and module (torch is not imported here,
    and older torch raised a plain RuntimeError whose message starts "CUDA out of memory")."""
    kind = type(error)
    if kind.__name__ == "OutOfMemoryError" and kind.__module__.split(".")[0] == "torch":
        return True
    return isinstance(error, RuntimeError) and str(error).startswith("CUDA out of memory")


class Preempted(TrainerError):
    """SIGTERM arrived; a checkpoint was written (or there was nothing to save) and the pod should retry."""

    code: ClassVar[str] = "Preempted"
    exit_code: ClassVar[int] = PREEMPTED_EXIT_CODE


class InternalError(TrainerError):
    """A failure of the trainer itself, or of the infrastructure (network, disk): retryable."""

    code: ClassVar[str] = "InternalError"
    exit_code: ClassVar[int] = INTERNAL_ERROR_EXIT_CODE


class StorageUnavailable(InternalError):
    """The S3 server stayed unreachable (or kept answering 5xx) for longer than the trainer's patience
    (`FTO_S3_PATIENCE_SECONDS`): retryable like any infrastructure failure; the next pod resumes from the newest
    complete checkpoint."""

    code: ClassVar[str] = "StorageUnavailable"


class HubUnavailable(InternalError):
    """The model hub (`HF_ENDPOINT`) could not be reached, answered 5xx, or sent a file that does not match its
    listing: retryable like any infrastructure failure (core/hub.py)."""

    code: ClassVar[str] = "HubUnavailable"


class InsufficientDisk(InternalError):
    """A download would not fit on the pod's disk (checked before the first byte, core/disk.py): retryable, since
    the space is the node's and another node, or this one cleaned up, may have it."""

    code: ClassVar[str] = "InsufficientDisk"


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A write refused because the filesystem (or its quota) is full."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def as_trainer_error(error: BaseException) -> TrainerError:
    """The contract outcome of any exception: itself when classified, else InternalError (retryable). A write
    that found the disk full (ENOSPC) is InsufficientDisk: the free space was checked before each download
    (core/disk.py), so the node's disk filled up meanwhile, and another attempt may find room."""
    if isinstance(error, TrainerError):
        return error
    if is_disk_full(error):
        return InsufficientDisk(
            f"the pod's disk filled up while writing {getattr(error, 'filename', None) or 'a file'} ({error}): the "
            "node ran out of local disk (other pods write to it too); the attempt is retried"
        )
    if is_gpu_out_of_memory(error):
        first_line = (str(error).splitlines() or [""])[0]
        return OutOfMemory(f"the GPU ran out of memory during the run: {first_line}")
    return InternalError(f"{type(error).__name__}: {error}")


USER_ERROR_CODES: frozenset[str] = frozenset(
    cls.code
    for cls in (
        ConfigInvalid,
        DatasetInvalid,
        DatasetNotFound,
        DiskRequestTooSmall,
        HubAccessDenied,
        ModelInvalid,
        ModelNotFound,
        ObjectCorrupt,
        OutOfMemory,
        PlanDoesNotFit,
        StorageAccessDenied,
        StorageNotFound,
        UnsafeObjectKey,
        UnsupportedHardware,
    )
)
"""The contract's user-error codes (all exit 42), for tests and for the operator's documentation."""
