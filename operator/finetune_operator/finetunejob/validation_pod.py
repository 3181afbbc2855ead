"""The data check as bare pods the operator makes itself: what their Job would say, and the next attempt. Pure.

Why: a Job costs the cluster's Job controller about six writes at the controller-manager's client rate (20
requests/s upstream), and at 500 FineTuneJobs that controller was the bottleneck before any training Job existed
(docs/benchmarks.md). So, unless a Kueue queue has to admit it (Kueue admits Jobs), the check is one pod at a
time, controlled by the FineTuneJob, and the operator does the Job controller's part with the validation Job's
own rules (builders.training.validation_job):
- a pod with a DisruptionTarget condition (evicted, preempted) does not count: a free retry;
- exit 42 (the user's data: nothing a retry can fix) or 137 (killed: out of memory) fails the check at once;
- any other failure is retried until `validation_backoff_limit` of them have failed;
- the pod's activeDeadlineSeconds bounds each attempt (DeadlineExceeded fails the check, as the Job's did).

`as_job` turns the pods into the JobObs the rest of the planner already reads (validation.py, training_state.py),
so the Job's path and the pod's path report the same phases and messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from finetune_operator.api.labels import COMPONENT_VALIDATOR, Names
from finetune_operator.api.objects import Manifest
from finetune_operator.builders.training import SIGKILL_EXIT_CODE, USER_ERROR_EXIT_CODE
from finetune_operator.core.observed import JobObs, PodObs
from finetune_operator.finetunejob.runs import ChildRef, JobActions

FINAL_EXIT_CODES = (USER_ERROR_EXIT_CODE, SIGKILL_EXIT_CODE)
DEADLINE_EXCEEDED = "DeadlineExceeded"


def check_pods(pods: Sequence[PodObs], run: int) -> list[PodObs]:
    """Run `run`'s bare data-check pods (a Job's pods have a Job uid), oldest attempt first."""
    mine = [p for p in pods if p.run == run and p.component == COMPONENT_VALIDATOR and not p.job_uid and p.owner_uid]
    return sorted(mine, key=lambda p: (p.created, p.name))


def _failed(pod: PodObs) -> bool:
    """A failure that counts against the retries: not a disruption, nor a pod the operator is deleting (one it
    stopped for a suspension ends Failed on its way out)."""
    return pod.phase == "Failed" and not pod.disrupted and not pod.deleting


def _live(pod: PodObs) -> bool:
    return not pod.deleting and pod.phase in ("Pending", "Running")


def as_job(name: str, run: int, pods: Sequence[PodObs], backoff_limit: int, *, suspend: bool) -> JobObs | None:
    """What the validation Job `name` would say of these attempts (None: no attempt exists)."""
    if not pods:
        return None
    failed = [p for p in pods if _failed(p)]
    final = next((p for p in failed if p.exit_code in FINAL_EXIT_CODES and p.reason != DEADLINE_EXCEEDED), None)
    late = next((p for p in failed if p.reason == DEADLINE_EXCEEDED), None)
    reason, message = "", ""
    if final is not None:
        reason = "PodFailurePolicy"
        message = f"container trainer of pod {final.name} exited with {final.exit_code}"
    elif late is not None:
        reason = DEADLINE_EXCEEDED
        message = f"validation pod {late.name} ran longer than its activeDeadlineSeconds"
    elif len(failed) > backoff_limit:
        reason = "BackoffLimitExceeded"
        message = f"{len(failed)} attempts of the data check failed"
    live = [p for p in pods if _live(p)]
    newest = pods[-1]
    return JobObs(
        name=name,
        run=run,
        component=COMPONENT_VALIDATOR,
        owner_uid=newest.owner_uid,
        namespace=newest.namespace,
        placement_hash=newest.placement_hash,
        suspended=suspend and not live,
        active=len(live),
        ready=sum(1 for p in live if p.phase == "Running"),
        succeeded=sum(1 for p in pods if p.phase == "Succeeded"),
        failed=len(failed),
        complete=any(p.phase == "Succeeded" and p.exit_code == 0 for p in pods),
        failed_condition=bool(reason),
        failure_reason=reason,
        failure_message=message,
        deleting=not live and any(p.deleting for p in pods),
    )


def _delete(pods: Sequence[PodObs]) -> list[ChildRef]:
    return [ChildRef("v1", "Pod", p.name, uid=p.uid) for p in pods if not p.deleting]


def next_attempt(names: Names, run: int, pods: Sequence[PodObs]) -> int:
    """The number of the next attempt: one past every attempt's name seen (a deleted attempt is not reused while
    its pod is still listed)."""
    prefix = names.validation_job(run) + "-"
    seen = [int(p.name[len(prefix) :]) for p in pods if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()]
    return max(seen, default=0) + 1


def pod_actions(
    job: JobObs | None,
    pods: Sequence[PodObs],
    first: Callable[[], list[Manifest]],
    again: Callable[[], Manifest],
    *,
    placement_hash: str,
    suspend: bool,
    may_start: bool,
    retry: bool = False,
) -> JobActions:
    """Create the check's first attempt (`first()`: the trainer's identity, the run's config, the pod last) or its
    next one (`again()`: only the pod), or delete attempts: all of them on a placement change or a retry of a
    failed check (a fresh start, as replacing the Job was), the running one while the run is suspended."""
    if job is None:
        return JobActions(first() if may_start and not suspend else [], [], None)
    if job.deleting:
        return JobActions([], [], None)  # the deleted attempts must be gone before the next one is made
    placement_changed = job.placement_hash != placement_hash and not job.complete
    if placement_changed or (retry and job.failed_condition):
        return JobActions([], _delete(pods), None)
    if job.finished:
        return JobActions([], [], None)
    live = [p for p in pods if _live(p)]
    if suspend:
        return JobActions([], _delete(live), None)
    if live or not may_start:
        return JobActions([], [], None)
    return JobActions([again()], [], None)


def retired_checks(pods: Sequence[PodObs], run: int) -> list[ChildRef]:
    """The bare data-check pods of every run other than `run` (a retired run's Job goes with its pods; these
    have no Job to take them along)."""
    return _delete([p for p in pods if p.component == COMPONENT_VALIDATOR and not p.job_uid and p.run != run])


def live_attempts(pods: Sequence[PodObs]) -> list[ChildRef]:
    """The attempts still running or about to: what stops a check that has failed for good (EvictedRepeatedly)."""
    return _delete([p for p in pods if _live(p)])
