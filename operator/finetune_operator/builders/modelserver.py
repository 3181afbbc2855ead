"""The objects of a ModelServer: desired-adapter ConfigMap, report ConfigMap, the sync sidecar's identity,
Deployment, Service and (with more than one replica) PodDisruptionBudget.

How a replica converges (docs/serving.md, "Shared serving"): every server pod runs the engine plus a small
sidecar from the trainer image (`python -m finetune_trainer adapters`) that reads the desired list from the
`-adapters` ConfigMap (only the operator writes it), fetches each adapter from S3 into an emptyDir both
containers mount, and calls the engine's /v1/load_lora_adapter and /v1/unload_lora_adapter on localhost;
it writes what it holds under its pod's key of the `-loaded` ConfigMap, which the operator reads into the
status. The sidecar alone gets a service-account token (a projected volume in its container), and its
Role reads one ConfigMap and patches another, by name; the engine container gets none.

The engine's pod is chosen from `SHARED_PODS`, keyed like builders.serving.ENGINES (a unit test keeps the
two tables' keys equal, so an engine added there must say here how it shares).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from finetune_operator.api.finetunejob import StorageSpec
from finetune_operator.api.hashing import content_hash
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH, MANAGED_BY, base_name, label_value
from finetune_operator.api.modelserver import SERVER_KIND, DesiredAdapter, ModelServerSpec
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.common import container_security_context, pod_security_context
from finetune_operator.builders.serving import (
    ENGINES,
    PORT,
    VLLM_BASE,
    _vllm_rank,
    our_server_container,
    server_resources,
    vllm_server_container,
)
from finetune_operator.core.settings import Settings

COMPONENT = "model-server"
LABEL_SERVER = "finetune.dev/server"
LABEL_SERVER_UID = "finetune.dev/server-uid"
LABEL_COMPONENT = "finetune.dev/component"
ADAPTERS_KEY = "adapters.json"
ADAPTERS_DIR = "/adapters"
SIDECAR = "adapters"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class ServerOwner(Owner):
    """The ModelServer that owns the objects (Owner's identity and reference, under the ModelServer kind)."""

    kind: ClassVar[str] = SERVER_KIND


@dataclass(frozen=True)
class ServerNames:
    """Names of a ModelServer's objects; `-server` keeps them apart from a FineTuneJob's own Deployment."""

    base: str

    @classmethod
    def of(cls, name: str) -> ServerNames:
        return cls(base_name(name))

    @property
    def deployment(self) -> str:
        return f"{self.base}-server"

    @property
    def adapters(self) -> str:
        return f"{self.base}-server-adapters"

    @property
    def loaded(self) -> str:
        return f"{self.base}-server-loaded"

    @property
    def sync(self) -> str:
        return f"{self.base}-server-sync"

    @property
    def config(self) -> str:
        return f"{self.base}-server-serve"


def selector(owner: ServerOwner) -> dict[str, str]:
    return {LABEL_SERVER_UID: owner.uid, LABEL_COMPONENT: COMPONENT}


def _metadata(owner: ServerOwner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {
            "app.kubernetes.io/name": "modelserver",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/instance": label_value(owner.name),
            LABEL_SERVER: label_value(owner.name),
            **selector(owner),
        },
        "annotations": {},
        "ownerReferences": [owner.reference()],
    }


def endpoint_url(owner: ServerOwner) -> str:
    return f"http://{ServerNames.of(owner.name).deployment}.{owner.namespace}.svc:{PORT}/v1"


def adapters_document(owner: ServerOwner, adapters: Sequence[DesiredAdapter]) -> dict[str, Any]:
    """adapters.json: the desired list the sidecars read (docs/trainer-contract.md, the adapters sidecar)."""
    return {"server": f"{owner.namespace}/{owner.name}", "adapters": [a.to_wire() for a in adapters]}


def adapters_config_map(owner: ServerOwner, adapters: Sequence[DesiredAdapter]) -> Manifest:
    text = json.dumps(adapters_document(owner, adapters), indent=2, sort_keys=True) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, ServerNames.of(owner.name).adapters),
        "data": {ADAPTERS_KEY: text},
    }


def loaded_config_map(owner: ServerOwner) -> Manifest:
    """Created empty (never applied again): each sidecar patches its own pod's key."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(owner, ServerNames.of(owner.name).loaded)}


def sync_rbac(owner: ServerOwner) -> list[Manifest]:
    """The sidecar's ServiceAccount and a Role on exactly its two ConfigMaps: it can read the desired list
    but not change it (only the operator writes it, so no tenant can unload another's adapter through it)."""
    names = ServerNames.of(owner.name)
    account: Manifest = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(owner, names.sync),
        "automountServiceAccountToken": False,
    }
    role: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner, names.sync),
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [names.adapters], "verbs": ["get"]},
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [names.loaded],
                "verbs": ["get", "patch"],
            },
        ],
    }
    binding: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner, names.sync),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.sync},
        "subjects": [{"kind": "ServiceAccount", "name": names.sync, "namespace": owner.namespace}],
    }
    return [account, role, binding]


def _s3_env(storage: StorageSpec) -> list[dict[str, Any]]:
    """AWS_* variables of the server's storage section (the same shape builders.common.s3_env renders)."""
    env: list[dict[str, Any]] = []
    if storage.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": storage.credentials_secret, "key": key}}})
        env.append(
            {
                "name": "AWS_SESSION_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": storage.credentials_secret, "key": "AWS_SESSION_TOKEN", "optional": True}
                },
            }
        )
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    return env


def _api_key_env(spec: ModelServerSpec, name: str) -> list[dict[str, Any]]:
    if not spec.api_key_secret:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret, "key": "apiKey"}}}]


def _resources(spec: ModelServerSpec, settings: Settings) -> dict[str, Any]:
    """The same defaults as a FineTuneJob's own server of the same engine (builders.serving)."""
    engine = ENGINES[spec.engine]
    requests, limits = spec.resources.requests, spec.resources.limits
    return server_resources(requests, limits, spec.gpu_resource, engine.gpu(settings), engine.memory(settings))


def _sidecar(spec: ModelServerSpec, owner: ServerOwner, settings: Settings, engine: str) -> dict[str, Any]:
    names = ServerNames.of(owner.name)
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
            f"http://127.0.0.1:{PORT}",
            "--namespace",
            owner.namespace,
            "--desired",
            names.adapters,
            "--report",
            names.loaded,
            "--dest",
            ADAPTERS_DIR,
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "HOME", "value": "/tmp"},
            *_s3_env(spec.storage),
            *_api_key_env(spec, "FTO_API_KEY"),
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


def _token_volume() -> dict[str, Any]:
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


def serve_json(spec: ModelServerSpec, owner: ServerOwner) -> dict[str, Any]:
    """Our engine's serve.json in shared mode: the base model under the server's name, adapters at run time."""
    return {
        "servedModelName": owner.name,
        "task": "causal-lm",
        "baseModelUri": spec.base_model_uri,
        "modelUri": spec.base_model_uri,
        "maxConcurrency": spec.max_concurrency,
        "maxAdapters": spec.max_adapters,
    }


def server_config_map(spec: ModelServerSpec, owner: ServerOwner) -> Manifest:
    text = json.dumps(serve_json(spec, owner), indent=2, sort_keys=True) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, ServerNames.of(owner.name).config),
        "data": {"serve.json": text},
    }


def _transformers_pod(spec: ModelServerSpec, owner: ServerOwner, settings: Settings) -> dict[str, Any]:
    """Our server holding peft adapters on one unmerged base; its admin routes answer loopback only."""
    # the preStop sleep too: a replica being deleted or rolled keeps answering while its endpoint goes
    server = our_server_container(
        settings=settings,
        s3_env=_s3_env(spec.storage),
        api_key_env=_api_key_env(spec, "FTO_API_KEY"),
        resources=_resources(spec, settings),
        extra_mounts=[{"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True}],
    )
    volumes = [
        {"name": "config", "configMap": {"name": ServerNames.of(owner.name).config}},
        {"name": "work", "emptyDir": {}},
    ]
    return {"containers": [server], "volumes": volumes}


def _vllm_pod(spec: ModelServerSpec, owner: ServerOwner, settings: Settings) -> dict[str, Any]:
    """vLLM with runtime LoRA updating; the base model fetched by the trainer image's `fetch` first."""
    fetch = {
        "name": "fetch-model",
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "finetune_trainer", "fetch", "--uri", spec.base_model_uri, "--dest", VLLM_BASE],
        "env": [*_s3_env(spec.storage), {"name": "HOME", "value": "/models"}],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    args = [
        "--model",
        VLLM_BASE,
        "--served-model-name",
        owner.name,
        "--enable-lora",
        "--max-loras",
        str(spec.max_adapters),
        "--max-cpu-loras",
        str(spec.max_adapters),
        "--max-lora-rank",
        str(_vllm_rank(spec.max_lora_rank)),
    ]
    server = vllm_server_container(
        settings=settings,
        model_args=args,
        max_num_seqs=spec.max_concurrency,
        api_key_env=_api_key_env(spec, "VLLM_API_KEY"),
        resources=_resources(spec, settings),
        # vLLM's runtime /v1/load_lora_adapter; guarded by VLLM_API_KEY, and the sidecar re-converges
        # any change not in the desired list (docs/serving.md, "Shared serving")
        extra_env=[{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}],
        extra_mounts=[{"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True}],
    )
    volumes = [
        {"name": "models", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    ]
    return {"initContainers": [fetch], "containers": [server], "volumes": volumes}


SharedPod = Callable[[ModelServerSpec, ServerOwner, Settings], dict[str, Any]]
SHARED_PODS: dict[str, SharedPod] = {"transformers": _transformers_pod, "vllm": _vllm_pod}


def server_deployment(spec: ModelServerSpec, owner: ServerOwner, settings: Settings, config_hash: str) -> Manifest:
    names = ServerNames.of(owner.name)
    pod = SHARED_PODS[spec.engine](spec, owner, settings)
    pod["containers"] = [*pod["containers"], _sidecar(spec, owner, settings, spec.engine)]
    pod["volumes"] = [
        *pod["volumes"],
        {"name": "adapters", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        _token_volume(),
    ]
    placement: dict[str, Any] = {}
    if spec.node_selector:
        placement["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        placement["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    metadata = _metadata(owner, names.deployment)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(owner)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": dict(metadata["labels"]),
                    "annotations": {"finetune.dev/serve-config-hash": config_hash},
                },
                "spec": {
                    "serviceAccountName": names.sync,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 45,
                    "securityContext": pod_security_context(),
                    **pod,
                    **placement,
                },
            },
        },
    }


def server_service(owner: ServerOwner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, ServerNames.of(owner.name).deployment),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(owner),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def server_pdb(owner: ServerOwner) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, ServerNames.of(owner.name).deployment),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(owner)}},
    }


def server_bundle(spec: ModelServerSpec, owner: ServerOwner, settings: Settings) -> list[Manifest]:
    """Sync identity, serve config, Service, (PDB,) Deployment last with the bundle's hash. The desired list
    and the report ConfigMap are not part of it: they change without touching the pods."""
    config = server_config_map(spec, owner)
    deployment = server_deployment(spec, owner, settings, content_hash(config["data"]))
    bundle = [*sync_rbac(owner), config, server_service(owner)]
    if spec.replicas > 1:
        bundle.append(server_pdb(owner))
    deployment["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = content_hash([*bundle, deployment])
    return [*bundle, deployment]
