"""The batch Jobs of one run (the CPU-only validation Job, then the training Job), and the headless Service
that distributed (torchrun) runs rendezvous on.

The Job is where a shared GPU cluster's expectations meet: GPU requests = limits, node placement, priority,
a memory-backed /dev/shm, hardened pods, S3 credentials from a secret, the Kueue queue label, and a
podFailurePolicy that fails at once on the trainer's user-error exit code (42) while preemption and
eviction (DisruptionTarget) do not use up the retry budget. With `distributed.workers > 1` it is an Indexed
Job: pod i is `<job>-i.<service>`, so every rank finds rank 0 by a stable DNS name.

The validation Job runs the same image on the same config (`finetune_trainer validate`): it reads the data,
applies the format, tokenizes with the base model's tokenizer, and asks for no GPU, so a user error ends the
run before a GPU is queued for. It is placed and queued like the training Job (node selector, tolerations,
Kueue queue, suspend), so it runs where the training would and waits its turn the same way.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api.finetunejob import HUB_TOKEN_ENV, FineTuneJobSpec, hub_sources, placement_spec_hash
from finetune_operator.api.labels import (
    ANNOTATION_PLACEMENT_HASH,
    ANNOTATION_TRAINING_HASH,
    COMPONENT_TRAINER,
    COMPONENT_VALIDATOR,
    KUEUE_QUEUE_LABEL,
    TRAINER_CONTAINER,
    Names,
    child_labels,
)
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.common import (
    container_security_context,
    metadata,
    placement,
    pod_metadata,
    pod_security_context,
    s3_env,
)
from finetune_operator.builders.trainer_config import CONFIG_DIR, CONFIG_PATH
from finetune_operator.core.settings import Settings

USER_ERROR_EXIT_CODE = 42
SIGKILL_EXIT_CODE = 137
"""128 + SIGKILL: what a container the kernel's OOM killer ended exits with (the kubelet adds reason OOMKilled)."""
MASTER_PORT = 29500
WORK_DIR = "/work"


COMMAND = ["python", "-m", "finetune_trainer", "train", "--config", CONFIG_PATH]
VALIDATE_COMMAND = ["python", "-m", "finetune_trainer", "validate", "--config", CONFIG_PATH]
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # GPU feature discovery's node label: the GPU type a spec names


def validate_command(spec: FineTuneJobSpec, gpu_memory: tuple[str, ...] = ()) -> list[str]:
    """`validate` with where the training pods will run: the memory plan is checked against it, and against
    the GPU table with the operator's own rows (`Settings.gpu_memory`, the chart's validation.gpuMemory); the
    model and data against resources.ephemeralStorage when it is set."""
    r = spec.resources
    product = r.node_selector.get(GPU_PRODUCT_LABEL, "")
    table = [arg for entry in gpu_memory for arg in ("--gpu-memory", entry)]
    # the sources must fit the disk the job asks for (a user error before any download, memory/disk.py)
    disk = ["--disk-limit", str(r.ephemeral_storage)] if r.ephemeral_storage is not None else []
    return [
        *VALIDATE_COMMAND,
        *("--gpus", str(r.gpus), "--gpu-product", product, "--memory-limit", str(r.memory)),
        *disk,
        *table,
    ]


"""One command for every shape: with several processes the trainer starts torchrun itself from NODE_RANK,
MASTER_ADDR and MASTER_PORT (docs/trainer-contract.md section 2), keeping the 42/75 exit codes that a bare
torchrun would turn into 1."""


def master_address(owner: Owner, run: int, workers: int) -> str:
    """Stable DNS name of worker 0 (pod hostname `<job>-0` under the headless Service)."""
    if workers == 1:
        return "127.0.0.1"
    names = Names.of(owner.name)
    return f"{names.job(run)}-0.{names.workers_service(run)}.{owner.namespace}.svc"


MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
"""What MLflow's client reads: a user and password, or a token. Each is optional (a Secret holds one pair or the
token); the trainer says when the named Secret gave none (FTO_MLFLOW_CREDENTIALS_SECRET holds its name)."""


def tracking_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """The tracking credentials from spec.tracking.mlflow.credentialsSecret, by secretKeyRef: never inline."""
    mlflow = spec.tracking.mlflow
    if mlflow is None or not mlflow.credentials_secret:
        return []
    secret = mlflow.credentials_secret
    env: list[dict[str, Any]] = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for key in MLFLOW_CREDENTIAL_KEYS
    ]
    env.append({"name": "FTO_MLFLOW_CREDENTIALS_SECRET", "value": secret})
    return env


def _env(spec: FineTuneJobSpec, owner: Owner, run: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        *s3_env(spec),
        *tracking_env(spec),
        {"name": "FTO_WORK_DIR", "value": WORK_DIR},
        {"name": "HF_HOME", "value": f"{WORK_DIR}/.cache/huggingface"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    if spec.distributed.workers > 1:
        index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        env.append({"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}})
    else:
        env.append({"name": "NODE_RANK", "value": "0"})
    env += [
        {"name": "MASTER_ADDR", "value": master_address(owner, run, spec.distributed.workers)},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
    ]
    return env


def hub_env(spec: FineTuneJobSpec, settings: Settings) -> list[dict[str, Any]]:
    """The validation pod's Hub settings when the spec has hf:// sources (docs/hub.md): the endpoint, and each
    source's token from its Secret (secretKeyRef: the token is never in the Job's spec, the status or a log).
    Only this pod gets them: training and serving pods read the object-storage copy."""
    sources = hub_sources(spec)
    if not sources:
        return []
    env: list[dict[str, Any]] = [{"name": "HF_ENDPOINT", "value": settings.hub_endpoint}]
    for name, source in sources.items():
        if source.token_secret is not None:
            ref = {"name": source.token_secret.name, "key": source.token_secret.key}
            env.append({"name": HUB_TOKEN_ENV[name], "valueFrom": {"secretKeyRef": ref}})
    return env


def ephemeral_storage(spec: FineTuneJobSpec, disk_bytes: int | None) -> str | None:
    """The training container's ephemeral-storage (request = limit): the manifest's resources.ephemeralStorage,
    else the data check's disk plan (status.validation.diskPlan.totalBytes) in MiB, else none (no data check).
    Why both: without a request the scheduler may pick a node whose disk the run then fills; without a limit the
    kubelet evicts the node's other pods before this one when it does."""
    if spec.resources.ephemeral_storage is not None:
        return str(spec.resources.ephemeral_storage)
    if disk_bytes is None or disk_bytes <= 0:
        return None
    return f"{-(-disk_bytes // 2**20)}Mi"


def _resources(spec: FineTuneJobSpec, disk_bytes: int | None = None) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, Any] = {"cpu": str(r.cpu), "memory": str(r.memory)}
    limits: dict[str, Any] = {"memory": str(r.memory)}
    if (disk := ephemeral_storage(spec, disk_bytes)) is not None:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = disk
    if r.gpus > 0:
        requests[r.gpu_resource] = str(r.gpus)
        limits[r.gpu_resource] = str(r.gpus)
    return {"requests": requests, "limits": limits}


def _container(
    spec: FineTuneJobSpec, owner: Owner, run: int, settings: Settings, disk_bytes: int | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(COMMAND),
        # where rank 0 reports progress (builders/rbac.py: the one object its ServiceAccount may patch)
        "env": [*_env(spec, owner, run), {"name": "FTO_PROGRESS_CONFIGMAP", "value": Names.of(owner.name).progress}],
        "resources": _resources(spec, disk_bytes),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        "securityContext": container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.distributed.workers > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    return container


def pod_failure_policy() -> dict[str, Any]:
    """Disruptions are free retries; the trainer's user-error exit code (a CUDA out-of-memory included) and a
    SIGKILL (137: the kernel's OOM kill) fail the Job at once: the same spec on the same memory would only run out
    of it again (finetunejob/oom.py). The disruption rule comes first, so an eviction or preemption that ends in
    a kill is still a free retry."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": [USER_ERROR_EXIT_CODE, SIGKILL_EXIT_CODE],
                },
            },
        ]
    }


def _job_metadata(
    spec: FineTuneJobSpec, owner: Owner, name: str, component: str, run: int, training_hash: str
) -> dict[str, Any]:
    hashes = {ANNOTATION_TRAINING_HASH: training_hash, ANNOTATION_PLACEMENT_HASH: placement_spec_hash(spec)}
    meta = metadata(owner, name, component, run, hashes)
    if spec.queue_name:
        meta["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
    return meta


def _validation_pod_spec(spec: FineTuneJobSpec, owner: Owner, run: int, settings: Settings) -> dict[str, Any]:
    """The data check's pod spec (`finetune_trainer validate`), one for the check's Job and its bare pod."""
    names = Names.of(owner.name)
    tracking = {e["name"] for e in tracking_env(spec)}  # the check talks to no tracker
    env = [e for e in _env(spec, owner, run) if e["name"] not in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", *tracking)]
    env += hub_env(spec, settings)
    memory = settings.validation_memory
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": validate_command(spec, settings.gpu_memory),
        "env": env,
        "resources": {"requests": {"cpu": settings.validation_cpu, "memory": memory}, "limits": {"memory": memory}},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        "securityContext": container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": names.trainer_account,
        "automountServiceAccountToken": False,  # it reports through its termination message only
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names.trainer_config(run)}},
            {"name": "work", "emptyDir": {}},
        ],
        **placement(spec),
    }
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    return pod_spec


def validation_job(spec: FineTuneJobSpec, owner: Owner, run: int, training_hash: str, settings: Settings) -> Manifest:
    """The CPU-only Job that checks run `run`'s data (`finetune_trainer validate`) before the training Job, for a
    run queued by Kueue (which admits Jobs); otherwise the check is a bare pod (validation_pod)."""
    names = Names.of(owner.name)
    labels = child_labels(owner.name, owner.uid, COMPONENT_VALIDATOR, run)
    meta = _job_metadata(spec, owner, names.validation_job(run), COMPONENT_VALIDATOR, run, training_hash)
    job_spec: dict[str, Any] = {
        "backoffLimit": validation_backoff_limit(settings),
        "activeDeadlineSeconds": settings.validation_deadline_seconds,
        "suspend": spec.suspend or bool(spec.queue_name),
        "podFailurePolicy": pod_failure_policy(),
        "template": {
            "metadata": pod_metadata(spec, labels),
            "spec": _validation_pod_spec(spec, owner, run, settings),
        },
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def validation_backoff_limit(settings: Settings) -> int:
    """How many failed attempts of the data check are retried (its Job's backoffLimit, its bare pods' count)."""
    return min(settings.backoff_limit, 2)


def validation_pod(
    spec: FineTuneJobSpec, owner: Owner, run: int, training_hash: str, settings: Settings, attempt: int
) -> Manifest:
    """Attempt `attempt` (1, 2, ...) of run `run`'s data check as a bare pod controlled by the FineTuneJob.

    Why not a Job: a Job costs the cluster's Job controller about six writes (the pod, its tracking finalizer,
    status updates), and that controller writes at the controller-manager's client rate (20 requests/s upstream):
    at 500 FineTuneJobs it was the bottleneck before any training Job existed (docs/benchmarks.md). The operator
    already watches the pod, so it creates the next attempt itself (finetunejob/validation_pod.py, the Job's
    rules: a disruption is free, exit 42 or 137 is final, at most validation_backoff_limit failures), and the
    pod's own activeDeadlineSeconds bounds each attempt. Same spec, labels and placement as the Job's pod; the
    hashes are on the pod (no Job carries them)."""
    names = Names.of(owner.name)
    labels = child_labels(owner.name, owner.uid, COMPONENT_VALIDATOR, run)
    template = pod_metadata(spec, labels)
    hashes = {ANNOTATION_TRAINING_HASH: training_hash, ANNOTATION_PLACEMENT_HASH: placement_spec_hash(spec)}
    meta = metadata(owner, names.validation_pod(run, attempt), COMPONENT_VALIDATOR, run, hashes)
    meta["labels"] = template["labels"]
    meta["annotations"] = {**template["annotations"], **meta["annotations"]}
    pod_spec = _validation_pod_spec(spec, owner, run, settings)
    pod_spec["activeDeadlineSeconds"] = settings.validation_deadline_seconds
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def training_job(
    spec: FineTuneJobSpec,
    owner: Owner,
    run: int,
    training_hash: str,
    settings: Settings,
    disk_bytes: int | None = None,
) -> Manifest:
    """The batch/v1 Job of run `run`. Created suspended when suspended by the user or queued by Kueue.
    `disk_bytes`: the data check's disk plan total (ephemeral_storage)."""
    names = Names.of(owner.name)
    workers = spec.distributed.workers
    labels = child_labels(owner.name, owner.uid, COMPONENT_TRAINER, run)
    meta = _job_metadata(spec, owner, names.job(run), COMPONENT_TRAINER, run, training_hash)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": settings.trainer_grace_seconds,
        "serviceAccountName": names.trainer_account,
        "automountServiceAccountToken": True,
        "securityContext": pod_security_context(),
        "containers": [_container(spec, owner, run, settings, disk_bytes)],
        "volumes": [
            {"name": "config", "configMap": {"name": names.trainer_config(run)}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.resources.shm_size)}},
            {"name": "work", "emptyDir": {}},
        ],
        **placement(spec),
    }
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    if workers > 1:
        pod_spec["subdomain"] = names.workers_service(run)
    job_spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "completions": workers,
        "parallelism": workers,
        "completionMode": "Indexed" if workers > 1 else "NonIndexed",
        "suspend": spec.suspend or bool(spec.queue_name),
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": pod_metadata(spec, labels), "spec": pod_spec},
    }
    if spec.resources.max_duration_seconds is not None:  # the Job controller stops its pods and fails it past this
        job_spec["activeDeadlineSeconds"] = spec.resources.max_duration_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def workers_service(spec: FineTuneJobSpec, owner: Owner, run: int) -> Manifest:
    """Headless Service giving each worker pod of a distributed run a stable DNS name."""
    names = Names.of(owner.name)
    selector = {
        k: v
        for k, v in child_labels(owner.name, owner.uid, COMPONENT_TRAINER, run).items()
        if k.startswith("finetune.dev/")
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, names.workers_service(run), COMPONENT_TRAINER, run),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }
