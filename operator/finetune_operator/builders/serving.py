"""The serving bundle of a published model: ConfigMap (serve.json), Deployment, Service, PodDisruptionBudget.

Two engines render here, one entry each in `ENGINES`: `transformers` (the trainer image's own
OpenAI-compatible server, reading serve.json) and `vllm` (vLLM's OpenAI server; an init container from the
trainer image fetches the base model and the adapter, or the full model, from S3 into a volume first;
docs/serving.md). Rolls are zero-downtime (maxUnavailable 0) and triggered by a hash of
serve.json on the pod template. The Deployment carries a hash of the whole bundle, so the operator
re-applies the bundle only when something in it changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.hashing import content_hash
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH, LABEL_COMPONENT, LABEL_RUN, LABEL_UID, Names
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.common import (
    container_security_context,
    metadata,
    placement,
    pod_metadata,
    pod_security_context,
    s3_env,
)
from finetune_operator.core.settings import Settings

PORT = 8000
COMPONENT = "serving"
SERVE_KEY = "serve.json"
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)
VLLM_BASE, VLLM_ADAPTER, VLLM_MODEL = "/models/base", "/models/adapter", "/models/model"
# A vLLM server keeps serving for this long after its pod is marked for deletion, before SIGTERM: the pod's
# endpoint is withdrawn from the Service (kube-proxy, ingress) while it still answers, so a roll drops no
# request sent in between (vLLM stops listening at SIGTERM). Within terminationGracePeriodSeconds (45).
VLLM_PRE_STOP: dict[str, Any] = {"preStop": {"sleep": {"seconds": 10}}}
# Our engine's server (uvicorn) likewise accepts no new connection from SIGTERM on, while it drains the ones it
# has (tests/serve/test_chaos_serving.py measures both): the same sleep, so a deleted or rolled-out pod answers
# until its endpoint is gone.
SERVER_PRE_STOP: dict[str, Any] = VLLM_PRE_STOP


@dataclass(frozen=True)
class Published:
    """The model a serving Deployment runs: one run that passed its gate (shown in status.published, which the
    planner derives on every pass: finetunejob/plan.py)."""

    run: int
    task: str
    base_model_uri: str
    model_uri: str
    adapter: bool
    lora_rank: int = 16

    def to_status(self) -> dict[str, Any]:
        """status.published: the API's camelCase names."""
        return {
            "run": self.run,
            "task": self.task,
            "baseModelUri": self.base_model_uri,
            "modelUri": self.model_uri,
            "adapter": self.adapter,
            "loraRank": self.lora_rank,
        }


def endpoint_url(owner: Owner) -> str:
    return f"http://{Names.of(owner.name).serving}.{owner.namespace}.svc:{PORT}/v1"


def _selector(owner: Owner) -> dict[str, str]:
    return {LABEL_UID: owner.uid, LABEL_COMPONENT: COMPONENT}


def serve_config(spec: FineTuneJobSpec, owner: Owner, published: Published) -> dict[str, Any]:
    """serve.json (docs/trainer-contract.md section 6)."""
    return {
        "servedModelName": owner.name,
        "task": published.task,
        "baseModelUri": published.base_model_uri,
        "modelUri": published.model_uri,
        "run": published.run,
        "maxConcurrency": spec.serving.max_concurrency,
    }


def serving_config_map(spec: FineTuneJobSpec, owner: Owner, published: Published) -> Manifest:
    names = Names.of(owner.name)
    text = json.dumps(serve_config(spec, owner, published), indent=2, sort_keys=True) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, names.serving_config, COMPONENT, published.run),
        "data": {SERVE_KEY: text},
    }


def _server_resources(spec: FineTuneJobSpec, settings: Settings) -> dict[str, Any]:
    return server_resources(
        spec.serving.resources.requests,
        spec.serving.resources.limits,
        spec.resources.gpu_resource,
        ENGINES[spec.serving.engine].gpu(settings),
        ENGINES[spec.serving.engine].memory(settings),
    )


def server_resources(
    requests: dict[str, Any], limits: dict[str, Any], gpu_resource: str, gpu: bool, memory: str
) -> dict[str, Any]:
    """A server container's resources: what the user asked for, plus the engine's defaults for what they did not.

    `gpu`: one GPU of `gpu_resource` unless the limits name that resource (`limits: {<gpuResource>: 0}` is a pod
    without one); `memory`: the request and limit when neither names memory ("": none). Shared with the
    ModelServer's pods, so both kinds of server get the same defaults.
    """
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    if gpu and gpu_resource not in limits:
        out.setdefault("requests", {})[gpu_resource] = "1"
        out.setdefault("limits", {})[gpu_resource] = "1"
    if memory and "memory" not in requests and "memory" not in limits:
        out.setdefault("requests", {})["memory"] = memory
        out.setdefault("limits", {})["memory"] = memory
    return out


def _api_key_env(spec: FineTuneJobSpec, name: str) -> list[dict[str, Any]]:
    secret = spec.serving.api_key_secret
    if not secret:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": "apiKey"}}}]


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def our_server_container(
    *,
    settings: Settings,
    s3_env: list[dict[str, Any]],
    api_key_env: list[dict[str, Any]],
    resources: dict[str, Any],
    extra_mounts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Our server's container (`finetune_trainer serve`, reading serve.json), for a published FineTuneJob and for a
    ModelServer alike: one home for its entry point, probes and preStop."""
    return {
        "name": "server",
        "image": settings.server_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "python",
            "-m",
            "finetune_trainer",
            "serve",
            "--config",
            f"/etc/finetune/{SERVE_KEY}",
            "--host",
            "0.0.0.0",
            "--port",
            str(PORT),
        ],
        "env": [
            *s3_env,
            {"name": "FTO_WORK_DIR", "value": "/work"},
            {"name": "HF_HOME", "value": "/work/.cache/huggingface"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            *api_key_env,
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        "startupProbe": _probe("/healthz", 5, 120),
        "readinessProbe": _probe("/readyz", 5, 3),
        "lifecycle": SERVER_PRE_STOP,
        "livenessProbe": _probe("/healthz", 10, 6),
        "resources": resources,
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/finetune", "readOnly": True},
            {"name": "work", "mountPath": "/work"},
            *extra_mounts,
        ],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _transformers_pod(spec: FineTuneJobSpec, owner: Owner, _published: Published, settings: Settings) -> dict[str, Any]:
    """Our own server; it reads the model's URIs from serve.json and fetches them itself."""
    container = our_server_container(
        settings=settings,
        s3_env=s3_env(spec),
        api_key_env=_api_key_env(spec, "FTO_API_KEY"),
        resources=_server_resources(spec, settings),
    )
    volumes = [
        {"name": "config", "configMap": {"name": Names.of(owner.name).serving_config}},
        {"name": "work", "emptyDir": {}},
    ]
    return {"containers": [container], "volumes": volumes}


def _vllm_rank(rank: int) -> int:
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def _fetch_container(spec: FineTuneJobSpec, copies: list[tuple[str, str]], settings: Settings) -> dict[str, Any]:
    """The init container that copies the model from S3 into the pod: the trainer image's own `fetch`
    (docs/trainer-contract.md section 8), with the same credentials and exit codes as training."""
    command = ["python", "-m", "finetune_trainer", "fetch"]
    for uri, dest in copies:
        command += ["--uri", uri, "--dest", dest]
    return {
        "name": "fetch-model",
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [*s3_env(spec), {"name": "HOME", "value": "/models"}],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _vllm_model_args(owner: Owner, published: Published) -> tuple[list[tuple[str, str]], list[str]]:
    """What to fetch where, and the vLLM flags that serve it (docs/serving.md).

    An adapter is served on top of its base model under the job's name (the base itself as `<name>-base`),
    with the adapter folder's tokenizer: the one the trainer saved, with the chat template it trained with
    (vLLM loads one tokenizer per server; the trainer never changes the vocabulary, so the base shares it).
    Full or merged weights are one folder with their own tokenizer, served as a model.
    """
    if not published.adapter:
        return [(published.model_uri, VLLM_MODEL)], ["--model", VLLM_MODEL, "--served-model-name", owner.name]
    args = [
        "--model",
        VLLM_BASE,
        "--served-model-name",
        f"{owner.name}-base",
        "--tokenizer",
        VLLM_ADAPTER,
        "--enable-lora",
        "--lora-modules",
        f"{owner.name}={VLLM_ADAPTER}",
        "--max-loras",
        "1",
        "--max-lora-rank",
        str(_vllm_rank(published.lora_rank)),
    ]
    return [(published.base_model_uri, VLLM_BASE), (published.model_uri, VLLM_ADAPTER)], args


@dataclass(frozen=True)
class VllmDevice:
    """Where a vLLM server runs (operator setting --vllm-device, chart `serving.vllmDevice`): the flags,
    environment and defaults that differ between vLLM's GPU image and its CPU build (docs/serving.md).

    One table for every vLLM pod the operator makes (a FineTuneJob's server, a ModelServer), so a CPU flag is
    changed in one place.
    """

    name: str
    gpu: bool
    """Whether the pod asks for one GPU of resources.gpuResource unless serving.resources names it."""
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    memory: str
    """Memory request and limit when serving.resources names no memory ("": none)."""

    def env_vars(self) -> list[dict[str, str]]:
        return [{"name": k, "value": v} for k, v in self.env]


VLLM_DEVICES: dict[str, VllmDevice] = {
    device.name: device
    for device in (
        # the official image on a GPU: vLLM picks the dtype (the model's), the context length and the KV cache
        VllmDevice(name="gpu", gpu=True, args=(), env=(), memory=""),
        # vLLM's CPU build (the `vllm` image of hack/build-images.sh), as measured on 2 cores (docs/serving.md):
        # float32, since bfloat16 is slow without AVX512; a 2048-token context (the model's own, 8192 for
        # SmolLM2, would need a bigger KV cache); a 2 GiB KV cache (VLLM_CPU_KVCACHE_SPACE, GiB, held in the
        # pod's memory: 46 KB a token for SmolLM2 in float32, so ~45k tokens); and 7 GiB for the whole pod
        # (measured RSS 5.7-5.9 GiB with SmolLM2, its KV cache and an adapter, plus the fetched files' page cache).
        # VLLM_CPU_OMP_THREADS_BIND=nobind: vLLM's default ("auto") pins its OpenMP threads to the NUMA node's
        # cores minus one reserved, and every server on a node computes the same list, so two servers (a
        # rolling update's old and new pod, two replicas) fight over the same core while others idle; unpinned,
        # the kernel spreads them over the cores the pod's cgroup allows
        VllmDevice(
            name="cpu",
            gpu=False,
            args=("--dtype", "float32", "--max-model-len", "2048"),
            env=(("VLLM_CPU_KVCACHE_SPACE", "2"), ("VLLM_CPU_OMP_THREADS_BIND", "nobind")),
            memory="7Gi",
        ),
    )
}


def vllm_device(settings: Settings) -> VllmDevice:
    return VLLM_DEVICES[settings.vllm_device]


def vllm_server_container(
    *,
    settings: Settings,
    model_args: list[str],
    max_num_seqs: int,
    api_key_env: list[dict[str, Any]],
    resources: dict[str, Any],
    extra_env: Sequence[dict[str, Any]] = (),
    extra_mounts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """vLLM's OpenAI server container, for a published FineTuneJob and for a ModelServer alike: one home for the
    entry point, the device's flags and environment (VLLM_DEVICES), the probes and the preStop, so a fix to any
    of them reaches both."""
    device = vllm_device(settings)
    return {
        "name": "server",
        "image": settings.vllm_image,
        "imagePullPolicy": settings.image_pull_policy,
        # the module, not the `vllm serve` CLI: the same entry point in the official image and the CPU build
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": [
            *model_args,
            *("--host", "0.0.0.0", "--port", str(PORT), "--max-num-seqs", str(max_num_seqs)),
            *device.args,
        ],
        "env": [
            {"name": "HOME", "value": "/models"},
            {"name": "HF_HOME", "value": "/models/.cache"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            *extra_env,
            *api_key_env,  # VLLM_API_KEY: vLLM reads it like --api-key; /health needs no key
            *device.env_vars(),
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        "startupProbe": _probe("/health", 10, 90),
        "readinessProbe": _probe("/health", 5, 3),
        "livenessProbe": _probe("/health", 10, 6),
        "lifecycle": VLLM_PRE_STOP,
        "resources": resources,
        "volumeMounts": [
            {"name": "models", "mountPath": "/models"},
            {"name": "shm", "mountPath": "/dev/shm"},
            *extra_mounts,
        ],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _vllm_pod(spec: FineTuneJobSpec, owner: Owner, published: Published, settings: Settings) -> dict[str, Any]:
    copies, args = _vllm_model_args(owner, published)
    container = vllm_server_container(
        settings=settings,
        model_args=args,
        max_num_seqs=spec.serving.max_concurrency,
        api_key_env=_api_key_env(spec, "VLLM_API_KEY"),
        resources=_server_resources(spec, settings),
    )
    volumes = [
        {"name": "models", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(spec.resources.shm_size)}},
    ]
    return {"initContainers": [_fetch_container(spec, copies, settings)], "containers": [container], "volumes": volumes}


@dataclass(frozen=True)
class Engine:
    """One serving engine (spec.serving.engine): the pod it runs and what it serves.

    The CRD's enum and its task rule, and the operator's literal, are checked against this table
    (tests/unit/operator/test_builders.py); adding an engine is one pod function and one entry here.
    """

    name: str
    pod: Callable[[FineTuneJobSpec, Owner, Published, Settings], dict[str, Any]]
    tasks: frozenset[str]
    gpu: Callable[[Settings], bool]
    """Whether a server pod asks for one GPU of resources.gpuResource unless serving.resources says otherwise."""
    memory: Callable[[Settings], str]
    """The server's memory request and limit unless serving.resources names memory ("": none)."""


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine(
            name="transformers",
            pod=_transformers_pod,
            tasks=frozenset({"causal-lm", "sequence-classification"}),
            gpu=lambda _settings: False,
            memory=lambda _settings: "",
        ),
        Engine(
            name="vllm",
            pod=_vllm_pod,
            tasks=frozenset({"causal-lm"}),
            gpu=lambda settings: vllm_device(settings).gpu,
            memory=lambda settings: vllm_device(settings).memory,
        ),
    )
}


def serving_deployment(
    spec: FineTuneJobSpec, owner: Owner, published: Published, settings: Settings, config_hash: str
) -> Manifest:
    names = Names.of(owner.name)
    engine_pod = ENGINES[spec.serving.engine].pod(spec, owner, published, settings)
    labels = {**metadata(owner, names.serving, COMPONENT)["labels"], LABEL_RUN: str(published.run)}
    pod_spec = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 45,  # the server drains in-flight requests for 30 s on SIGTERM
        "securityContext": pod_security_context(),
        **engine_pod,
        **placement(spec),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, names.serving, COMPONENT, published.run),
        "spec": {
            "replicas": spec.serving.replicas,
            "selector": {"matchLabels": _selector(owner)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": pod_metadata(spec, labels, {"finetune.dev/serve-config-hash": config_hash}),
                "spec": pod_spec,
            },
        },
    }


def serving_service(owner: Owner) -> Manifest:
    names = Names.of(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, names.serving, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(owner),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def serving_pdb(owner: Owner) -> Manifest:
    names = Names.of(owner.name)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, names.serving, COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(owner)}},
    }


def serving_bundle(spec: FineTuneJobSpec, owner: Owner, published: Published, settings: Settings) -> list[Manifest]:
    """ConfigMap, Service, (PDB,) Deployment: the Deployment last, stamped with the whole bundle's hash."""
    config_map = serving_config_map(spec, owner, published)
    deployment = serving_deployment(spec, owner, published, settings, content_hash(config_map["data"]))
    bundle = [config_map, serving_service(owner)]
    if spec.serving.replicas > 1:
        bundle.append(serving_pdb(owner))
    bundle_hash = content_hash([*bundle, deployment])
    deployment["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = bundle_hash
    return [*bundle, deployment]
