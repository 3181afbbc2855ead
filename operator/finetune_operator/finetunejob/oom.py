"""Out of memory: a trainer the kernel killed (OOMKilled, exit 137) or one that ran out of GPU memory, told apart
from any other failure and reported with the numbers the user needs to fix it. Pure.

Why not retry: the same spec on the same memory runs out of it again, so three identical attempts would only
burn GPU hours and hide the cause behind `BackoffLimitExceeded`. The Job's podFailurePolicy fails it at the first
exit 137 of the trainer container (builders/training.py; a disruption, which also ends in a kill, is matched first
and ignored), and the trainer reports a CUDA out-of-memory as `OutOfMemory` with the user-error exit code 42. The
run then ends `Failed` with reason `OutOfMemory`, a message with the memory plan the data check recorded in
`status.validation.memoryPlan` beside the container's limit, and the changes that would fit; a change of
`resources` retries the run from its last checkpoint (plan.py), and so does the `finetune.dev/retry` annotation.
Retrying automatically with a halved micro-batch was left out on purpose: the plan is the trainer's estimate, and
a retry the user did not ask for, with a batch they did not choose, is harder to explain than a clear failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.labels import COMPONENT_VALIDATOR
from finetune_operator.builders.training import SIGKILL_EXIT_CODE
from finetune_operator.core.observed import PodObs

OUT_OF_MEMORY = "OutOfMemory"
"""The reason and error code of a run that ran out of memory (the trainer's own code for a CUDA OOM, too)."""
KILLED = "Killed"
"""Exit 137 without the kubelet's OOMKilled: SIGKILL from something else (a grace period that ran out)."""
OOM_KILLED = "OOMKilled"

GIB = 1024**3


def killed_pod(pods: Sequence[PodObs]) -> PodObs | None:
    """The newest failed pod whose trainer container ended by SIGKILL (exit 137), OOMKilled ones first."""
    killed = [p for p in pods if p.phase == "Failed" and not p.disrupted and p.exit_code == SIGKILL_EXIT_CODE]
    killed.sort(key=lambda p: (p.termination_reason == OOM_KILLED, p.created))
    return killed[-1] if killed else None


def kill_error(pod: PodObs, component: str) -> tuple[str, str]:
    """(code, message) for a pod killed with exit 137: OutOfMemory when the kubelet says OOMKilled."""
    what = "validation" if component == COMPONENT_VALIDATOR else "training"
    if pod.termination_reason == OOM_KILLED:
        return OUT_OF_MEMORY, (
            f"{what} pod {pod.name} was killed for using more memory than its container's limit (OOMKilled, "
            "exit 137); the run is not retried with the same memory"
        )
    return KILLED, (
        f"{what} pod {pod.name} was killed (SIGKILL, exit 137) without the kubelet reporting OOMKilled or a "
        "disruption (a termination grace period that ran out, or a kill from outside the pod); the run is not "
        "retried by itself: annotate finetune.dev/retry to run it again from its last checkpoint"
    )


def _gib(value: Any) -> str:
    return f"{value / GIB:.1f} GiB" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def plan_summary(memory_plan: dict[str, Any] | None) -> str:
    """The memory plan's numbers in one sentence (the data check's estimate, recorded in status.validation)."""
    if not isinstance(memory_plan, dict) or not memory_plan:
        return "no memory plan was recorded (the data check did not run or predates it)"
    fits = "fits" if memory_plan.get("fits") else "does NOT fit"
    checkpointing = "on" if memory_plan.get("gradientCheckpointing") else "off"
    get = memory_plan.get
    return (
        f"memory plan: estimate {_gib(get('estimateBytes'))} against a budget of {_gib(get('budgetBytes'))} on "
        f"{get('accelerator', '?')} ({fits}; peak at {get('peakAt', '?')}), micro-batch {get('microBatch', '?')} x "
        f"{get('gradientAccumulationSteps', '?')} accumulation steps, gradient checkpointing {checkpointing}, "
        f"precision {get('precision', '?')}, world size {get('worldSize', '?')}"
    )


def changes_that_fit(spec: FineTuneJobSpec, memory_plan: dict[str, Any] | None, *, host: bool) -> list[str]:
    """What to change, most direct first: the plan's own fitting suggestions, then each lever the spec has not
    pulled yet. `host`: the kernel killed the container (host memory), so its limit comes first."""
    changes: list[str] = []
    if host:
        changes.append(f"raise spec.resources.memory (now {spec.resources.memory}; the container's limit)")
    suggestions = memory_plan.get("suggestions") if isinstance(memory_plan, dict) else None
    for suggestion in suggestions if isinstance(suggestions, list) else []:
        if isinstance(suggestion, dict) and suggestion.get("fits") and suggestion.get("change"):
            changes.append(f"{suggestion['change']} (estimate {_gib(suggestion.get('estimateBytes'))})")
    hyper = spec.hyperparameters
    if hyper.batch_size != "auto":
        changes.append(f"hyperparameters.batchSize: auto (now {hyper.batch_size}; the largest micro-batch that fits)")
    if not hyper.gradient_checkpointing:
        changes.append("hyperparameters.gradientCheckpointing: true")
    if spec.method.type != "qlora":
        changes.append(f"method.type: qlora (now {spec.method.type}; 4-bit base weights)")
    if spec.resources.gpus > 0:
        changes.append(
            f"more GPUs: resources.gpus or distributed.workers with sharding: fsdp (now {spec.resources.gpus} per pod)"
        )
    return changes


def explained(
    message: str,
    spec: FineTuneJobSpec,
    memory_plan: dict[str, Any] | None,
    *,
    host: bool,
    validation_memory: str | None = None,
) -> str:
    """The full OutOfMemory message: what happened, the plan's numbers, what would fit. The validation pod's
    memory (`validation_memory`, given for a validation pod) is the operator's setting, not the spec's."""
    if validation_memory is not None:
        return (
            f"{message}. The validation pod's limit is the operator's {validation_memory}: raise --validation-memory "
            "(chart value validation.memory)"
        )
    fixes = "; ".join(changes_that_fit(spec, memory_plan, host=host))
    return f"{message}. {plan_summary(memory_plan)}. Changes that would fit: {fixes}"
