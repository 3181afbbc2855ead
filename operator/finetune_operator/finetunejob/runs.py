"""Run bookkeeping: which run the spec asks for, and what the training side of the cluster must look like.

A run is one training of one training-relevant spec (hash in status.trainingSpecHash). A new hash starts
run N+1 (new Job, output under run-N+1/), and every other run's Job is retired. The numbers live in status
(the operator never writes spec); a Job carries its run label and training hash, so a restart between
"created the Job" and "wrote the status" adopts the Job instead of starting yet another run.

Placement (memory, cpu, node selector, tolerations, priority, pod metadata, queue) is not part of a run's
identity: a Job's pod template is immutable, so a placement change replaces the run's Job - deleted in the
foreground, so the old pods are gone before new ones start - and the new pods resume the same run from its
last checkpoint. A Job that succeeded is left alone; one that failed is retried with the new placement
(the usual fix for an out-of-memory kill). A failed run is also retried, unchanged, when its user sets a new
value in the FineTuneJob's `finetune.dev/retry` annotation (after fixing the data in place, or the node
pool): the same replacement, the same resume. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec, placement_spec_hash
from finetune_operator.api.labels import COMPONENT_VALIDATOR, Names
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.rbac import progress_config_map, trainer_rbac
from finetune_operator.builders.trainer_config import trainer_config_map
from finetune_operator.builders.training import training_job, validation_job, validation_pod, workers_service
from finetune_operator.core.observed import JobObs
from finetune_operator.core.settings import Settings


@dataclass(frozen=True)
class ChildRef:
    """A child to delete: enough to address it. The delete goes out only if the object is the FineTuneJob's
    own (core.kube reads its controller unless `uid`, the object's uid as observed, says which one it is)."""

    api_version: str
    kind: str
    name: str
    foreground: bool = False  # the object stays (deletionTimestamp set) until its dependents are gone
    uid: str = ""


def current_run(status: dict[str, Any], training_hash: str, jobs: Sequence[JobObs]) -> int:
    """The run for `training_hash`: the status's run if the hash is unchanged, else an adopted or new one."""
    previous = int(status.get("run") or 0)
    if previous >= 1 and status.get("trainingSpecHash") == training_hash:
        return previous
    adoptable = [j.run for j in jobs if j.training_hash == training_hash and j.run > previous]
    if adoptable:
        return max(adoptable)
    return max([previous, *(j.run for j in jobs)]) + 1


def training_children(
    spec: FineTuneJobSpec,
    owner: Owner,
    run: int,
    training_hash: str,
    settings: Settings,
    *,
    validated_here: bool = False,
    disk_bytes: int | None = None,
    commits: Mapping[str, str] | None = None,
) -> list[Manifest]:
    """Everything run `run` needs, in creation order: the Job last, so its existence implies the rest.

    `validated_here`: the run's validation Job exists, which implies its children (the trainer's identity and
    this run's config, the same objects) exist too, so they are not created again: each would be a create
    answered 409 and a read of the existing object's owner, four round trips per run on the hand-over from
    validation to training, measured as the largest part of that hand-over at 500 jobs (docs/benchmarks.md).
    `disk_bytes`: the validation's disk plan total, the training pod's ephemeral-storage. `commits`: the hf://
    sources' commits of a passed validation this run reuses, pinned in its config (a run validated here reads them
    from the run's hub-sources.json, which its validation wrote)."""
    shared = [] if validated_here else [*trainer_rbac(owner), trainer_config_map(spec, owner, run, commits)]
    children = [*shared, progress_config_map(owner)]
    if spec.distributed.workers > 1:
        children.append(workers_service(spec, owner, run))
    children.append(training_job(spec, owner, run, training_hash, settings, disk_bytes))
    return children


def validation_children(
    spec: FineTuneJobSpec, owner: Owner, run: int, training_hash: str, settings: Settings
) -> list[Manifest]:
    """What the validation of run `run` needs: the trainer's identity and config, then its Job (last)."""
    return [
        *trainer_rbac(owner),
        trainer_config_map(spec, owner, run),
        validation_job(spec, owner, run, training_hash, settings),
    ]


def validation_pod_children(
    spec: FineTuneJobSpec, owner: Owner, run: int, training_hash: str, settings: Settings
) -> list[Manifest]:
    """The first attempt of run `run`'s data check as a bare pod (finetunejob/validation_pod.py): the trainer's
    identity and config, then the pod (last: it names both)."""
    return [
        *trainer_rbac(owner),
        trainer_config_map(spec, owner, run),
        validation_pod(spec, owner, run, training_hash, settings, 1),
    ]


def retired_children(owner: Owner, jobs: Sequence[JobObs], run: int) -> list[ChildRef]:
    """The Jobs (and their config and headless Service) of every run other than `run`."""
    names = Names.of(owner.name)
    refs: list[ChildRef] = []
    for job in jobs:
        if job.run == run or job.deleting:
            continue
        refs += [
            ChildRef("batch/v1", "Job", job.name, uid=job.uid),
            ChildRef("v1", "ConfigMap", names.trainer_config(job.run)),
            ChildRef("v1", "Service", names.workers_service(job.run)),
        ]
    return refs


@dataclass(frozen=True)
class JobActions:
    create: list[Manifest]
    delete: list[ChildRef]
    suspend_job: tuple[str, bool] | None


def needs_new_placement(spec: FineTuneJobSpec, job: JobObs) -> bool:
    """Whether `job` runs with placement the spec no longer asks for, and replacing it can still help (a
    succeeded Job has nothing left to do)."""
    completions = 1 if job.component == COMPONENT_VALIDATOR else spec.distributed.workers
    finished_training = job.complete or job.succeeded >= completions
    return job.placement_hash != placement_spec_hash(spec) and not finished_training


def job_actions(
    spec: FineTuneJobSpec,
    job: JobObs | None,
    children: Callable[[], list[Manifest]],
    *,
    may_start: bool,
    retry: bool = False,
) -> JobActions:
    """Create (`children()`, the Job last), suspend/resume, replace (placement changed, or `retry` of a failed
    Job) or (Kueue + suspend) delete one Job of a run: the training Job, or the validation Job before it.

    With a Kueue queue the Job's spec.suspend belongs to Kueue: suspending deletes the unfinished Job
    (checkpoints stay in S3) and resuming creates it again, to be admitted again.
    """
    kueue = bool(spec.queue_name)
    if job is None or job.deleting:
        if may_start and not (kueue and spec.suspend) and job is None:
            return JobActions(children(), [], None)
        return JobActions([], [], None)
    if needs_new_placement(spec, job) or (retry and job.failed_condition):
        return JobActions([], [ChildRef("batch/v1", "Job", job.name, foreground=True, uid=job.uid)], None)
    if job.finished:
        return JobActions([], [], None)
    if kueue and spec.suspend:
        return JobActions([], [ChildRef("batch/v1", "Job", job.name, uid=job.uid)], None)
    if not kueue and job.suspended != spec.suspend:
        return JobActions([], [], (job.name, spec.suspend))
    return JobActions([], [], None)
