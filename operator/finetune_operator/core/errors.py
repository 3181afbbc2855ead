"""The operator's two error families: permanent (the spec or manifest is wrong) and temporary (retry later).

Why our own and not kopf's: the module that raises them (`kube`) and the one that handles them (`reconcile`)
run in the work queue's threads, which kopf never sees. Keeping kopf's vocabulary at kopf's edge (the handler
layer) means the control loop can be read, tested and reused without knowing the framework.
"""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying the same request cannot help: the API refused it as invalid (400, 422)."""


class TemporaryError(Exception):
    """Trouble that passes: conflicts, throttling, server or network errors, missing permissions.

    `delay` is how many seconds the work queue waits before the next pass of the same key.
    """

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class Conflict(TemporaryError):
    """The object changed since it was read (optimistic concurrency); reconcile again from fresh state."""


class NameTaken(PermanentError):
    """An object the operator would create or apply exists under that name and is controlled by someone else
    (another owner, or nobody): the operator never adopts, overwrites or deletes it. Retrying cannot help
    until a person removes or renames that object."""

    code = "NameTaken"


class NotLeader(Exception):
    """This replica's leadership is stale (its last Lease renewal is older than the renew deadline, e.g. it was
    frozen and woke up after a standby took over): the write was refused before it was sent. Neither family on
    purpose: it is not the API's answer and retrying cannot help; the process steps down (exits) instead."""
