"""Every container a server pod runs, one home for each: our engine's server, vLLM's server (and the table of
devices it runs on) with the gateway in front of it, the init container that fetches a model from S3, and a
ModelServer's adapters sidecar.

Why one home: a job's own server and a shared ModelServer run the same engines; a probe, a preStop, a security
setting or a device flag fixed here reaches both (builders/engines.py composes these into pods).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.builders.common import container_security_context
from finetune_operator.core.settings import Settings

PORT = 8000
"""The Service port: our server's, or on a vLLM pod the gateway's (vLLM itself listens on loopback only)."""
VLLM_PORT = 8080
"""vLLM's port on 127.0.0.1 inside the pod: the gateway and the adapters sidecar reach it, nothing outside."""
SERVE_KEY = "serve.json"
ADAPTERS_DIR = "/adapters"
SIDECAR = "adapters"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# A vLLM server keeps serving for this long after its pod is marked for deletion, before SIGTERM: the pod's
# endpoint is withdrawn from the Service (kube-proxy, ingress) while it still answers, so a roll drops no
# request sent in between (vLLM stops listening at SIGTERM). Within terminationGracePeriodSeconds (45).
VLLM_PRE_STOP: dict[str, Any] = {"preStop": {"sleep": {"seconds": 10}}}
# Our engine's server (uvicorn) likewise accepts no new connection from SIGTERM on, while it drains the ones it
# has (tests/serve/test_chaos_serving.py measures both): the same sleep, so a deleted or rolled-out pod answers
# until its endpoint is gone.
SERVER_PRE_STOP: dict[str, Any] = VLLM_PRE_STOP


def probe(path: str, period: int, failures: int, timeout: int | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
    }
    if timeout is not None:
        found["timeoutSeconds"] = timeout
    return found


def loopback_probe(port: int, path: str, period: int, failures: int) -> dict[str, Any]:
    """A probe of a server that listens on 127.0.0.1 only: run inside its container (python3 is in vLLM's image),
    failing on any answer but 2xx or none within 5 s."""
    script = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{port}{path}', timeout=5)"
    return {
        "exec": {"command": ["python3", "-c", script]},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 10,
    }


def api_key_env(secret: str, name: str) -> list[dict[str, Any]]:
    """The server's API key from `secret` (key `apiKey`) under the variable its engine reads; none without one."""
    if not secret:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": "apiKey"}}}]


def server_resources(
    requests: dict[str, Any], limits: dict[str, Any], gpu_resource: str, gpu: bool, memory: str
) -> dict[str, Any]:
    """A server container's resources: what the user asked for, plus the engine's defaults for what they did not.

    `gpu`: one GPU of `gpu_resource` unless the limits name that resource (`limits: {<gpuResource>: 0}` is a pod
    without one); `memory`: the request and limit when neither names memory ("": none). Both kinds of server
    get the same defaults (builders.engines.Engine.resources).
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


def fetch_container(settings: Settings, env: list[dict[str, Any]], copies: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The init container that copies a model from S3 into the pod (`copies`: uri, destination): the trainer
    image's own `fetch` (docs/trainer-contract.md section 8), with the same credentials and exit codes as
    training."""
    command = ["python", "-m", "finetune_trainer", "fetch"]
    for uri, dest in copies:
        command += ["--uri", uri, "--dest", dest]
    return {
        "name": "fetch-model",
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [*env, {"name": "HOME", "value": "/models"}],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


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
        "startupProbe": probe("/healthz", 5, 120),
        "readinessProbe": probe("/readyz", 5, 3),
        "lifecycle": SERVER_PRE_STOP,
        "livenessProbe": probe("/healthz", 10, 6),
        "resources": resources,
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/finetune", "readOnly": True},
            {"name": "work", "mountPath": "/work"},
            *extra_mounts,
        ],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


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
    of them reaches both. It listens on 127.0.0.1:VLLM_PORT only (its runtime-LoRA routes with it); clients reach
    it through `vllm_gateway_container`."""
    device = vllm_device(settings)
    return {
        "name": "server",
        "image": settings.vllm_image,
        "imagePullPolicy": settings.image_pull_policy,
        # the module, not the `vllm serve` CLI: the same entry point in the official image and the CPU build
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": [
            *model_args,
            # loopback only: the gateway (vllm_gateway_container) holds the Service port
            *("--host", "127.0.0.1", "--port", str(VLLM_PORT), "--max-num-seqs", str(max_num_seqs)),
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
        # no port: the kubelet cannot reach a loopback listener, so vLLM's own probes run inside its container;
        # the pod's readiness is the gateway's (/readyz asks vLLM's /health)
        "startupProbe": loopback_probe(VLLM_PORT, "/health", 10, 90),
        "livenessProbe": loopback_probe(VLLM_PORT, "/health", 10, 6),
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


GATEWAY = "gateway"
GATEWAY_ADAPTERS_FILE = f"{ADAPTERS_DIR}/.adapters.json"
"""The sidecar's copy of the desired list (finetune_trainer.serving.adapters.cli.DESIRED_COPY): the tenant keys."""


def vllm_gateway_container(
    *, settings: Settings, api_key_env: list[dict[str, Any]], base_model: str = "", shared: bool = False
) -> dict[str, Any]:
    """The gateway in front of vLLM (`finetune_trainer gateway`): the only container with the Service port. It
    checks the key before the body (the server's key, and on a shared server each tenant's from the sidecar's
    copy of adapters.json), bounds body size, requests in progress and max_tokens, and forwards the OpenAI
    inference routes to vLLM on loopback; vLLM's load/unload routes are never forwarded. Its liveness answers
    from the gateway itself and its readiness asks vLLM, each on its own connection, so a long request blocks
    neither. No token, no writable file: a read-only root and (shared) the adapters volume read-only."""
    command = [
        *("python", "-m", "finetune_trainer", "gateway"),
        *("--upstream", f"http://127.0.0.1:{VLLM_PORT}", "--host", "0.0.0.0", "--port", str(PORT)),
    ]
    mounts: list[dict[str, Any]] = []
    if shared:
        command += ["--adapters-file", GATEWAY_ADAPTERS_FILE, "--base-model", base_model]
        mounts.append({"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True})
    return {
        "name": GATEWAY,
        "image": settings.server_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": list(api_key_env),
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": probe("/readyz", 5, 3, timeout=5),
        "livenessProbe": probe("/healthz", 10, 6, timeout=5),
        "lifecycle": copy.deepcopy(VLLM_PRE_STOP),  # keeps answering, as vLLM does, while the endpoint is withdrawn
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": mounts,
        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def adapters_sidecar(
    *,
    settings: Settings,
    engine: str,
    engine_port: int,
    namespace: str,
    desired: str,
    report: str,
    s3_env: list[dict[str, Any]],
    api_key_env: list[dict[str, Any]],
) -> dict[str, Any]:
    """A ModelServer replica's sync sidecar (`finetune_trainer adapters`): reads the desired list from ConfigMap
    `desired` (and copies it into ADAPTERS_DIR: the tenant keys), fetches adapters into ADAPTERS_DIR, loads them
    into the engine on localhost (`engine_port`: vLLM's loopback port, not the gateway's), and reports under its
    pod's key of ConfigMap `report`. The only container with a service-account token (volume `sync-token`)."""
    return {
        "name": SIDECAR,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "python",
            "-m",
            "finetune_trainer",
            "adapters",
            "--engine",
            engine,
            "--engine-url",
            f"http://127.0.0.1:{engine_port}",
            "--namespace",
            namespace,
            "--desired",
            desired,
            "--report",
            report,
            "--dest",
            ADAPTERS_DIR,
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "HOME", "value": "/tmp"},
            *s3_env,
            *api_key_env,
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [
            {"name": "adapters", "mountPath": ADAPTERS_DIR},
            {"name": "sync-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def sync_token_volume() -> dict[str, Any]:
    """The sidecar's service-account token, CA and namespace: what automounting gives, for one container."""
    return {
        "name": "sync-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]
        },
    }
