"""The objects of a ModelServer: desired-adapter ConfigMap, report ConfigMap, the sync sidecar's identity,
Deployment, Service, NetworkPolicy, (with more than one replica) PodDisruptionBudget, and its generated admin key's
Secret unless spec.apiKeySecret names one or spec.allowUnauthenticated opts out.

How a replica converges (docs/serving.md, "Shared serving"): every server pod runs the engine plus a small
sidecar from the trainer image (`python -m finetune_trainer adapters`) that reads the desired list from the
`-adapters` ConfigMap (only the operator writes it), fetches each adapter from S3 into an emptyDir both
containers mount, and calls the engine's /v1/load_lora_adapter and /v1/unload_lora_adapter on localhost;
it writes what it holds under its pod's key of the `-loaded` ConfigMap, which the operator reads into the
status. The sidecar alone gets a service-account token (a projected volume in its container), and its
Role reads one ConfigMap and patches another, by name; the engine container gets none.

The engine's part of the pod is the shared rendering of its entry in builders.engines.ENGINES, the sidecar and
the pod's other containers come from builders.containers, and the Deployment, Service and PDB are the ones a
FineTuneJob's own server gets (builders.workload).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from finetune_operator.api.hashing import content_hash
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH, MANAGED_BY, base_name, label_value
from finetune_operator.api.modelserver import SERVER_KIND, DesiredAdapter, ModelServerSpec
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.builders.apikey import key_secret
from finetune_operator.builders.common import storage_env
from finetune_operator.builders.containers import (
    PORT,
    SERVE_KEY,
    adapters_sidecar,
    api_key_env,
    sync_token_volume,
)
from finetune_operator.builders.engines import ENGINES, ServerInputs
from finetune_operator.builders.workload import (
    server_deployment,
    server_network_policy,
    server_pdb,
    server_pod_spec,
    server_service,
)
from finetune_operator.core.settings import Settings

COMPONENT = "model-server"
LABEL_SERVER = "finetune.dev/server"
LABEL_SERVER_UID = "finetune.dev/server-uid"
LABEL_COMPONENT = "finetune.dev/component"
ADAPTERS_KEY = "adapters.json"


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

    @property
    def api_key(self) -> str:
        """The Secret of the server's generated admin key (`-server-`: apart from a FineTuneJob's `-api-key`)."""
        return f"{self.base}-server-api-key"


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
        "data": {SERVE_KEY: text},
    }


def server_key_secret(spec: ModelServerSpec, owner: ServerOwner) -> str:
    """The Secret (key apiKey) of the server's admin key: spec.apiKeySecret, else the one the operator generates;
    "" only with allowUnauthenticated."""
    if spec.api_key_secret:
        return spec.api_key_secret
    return "" if spec.allow_unauthenticated else ServerNames.of(owner.name).api_key


def generated_key_secret(owner: ServerOwner, key: str) -> Manifest:
    """The server's generated admin key (builders.apikey), controlled by the ModelServer."""
    return key_secret(_metadata(owner, ServerNames.of(owner.name).api_key), key)


def server_inputs(spec: ModelServerSpec, owner: ServerOwner, settings: Settings) -> ServerInputs:
    """The server's spec in the engines' terms (the shared memory volume is fixed: vLLM's workers of one pod)."""
    return ServerInputs(
        name=owner.name,
        config_map=ServerNames.of(owner.name).config,
        storage=spec.storage,
        api_key_secret=server_key_secret(spec, owner),
        requests=spec.resources.requests,
        limits=spec.resources.limits,
        gpu_resource=spec.gpu_resource,
        max_concurrency=spec.max_concurrency,
        shm_size="1Gi",
        settings=settings,
    )


def _placement(spec: ModelServerSpec) -> dict[str, Any]:
    placement: dict[str, Any] = {}
    if spec.node_selector:
        placement["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        placement["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    return placement


def _server_pod(spec: ModelServerSpec, owner: ServerOwner, settings: Settings) -> dict[str, Any]:
    """The engine's shared pod, plus the sync sidecar and its volumes (the adapters, a scratch /tmp, its token)."""
    names = ServerNames.of(owner.name)
    engine = ENGINES[spec.engine]
    pod = engine.shared(server_inputs(spec, owner, settings), spec)
    sidecar = adapters_sidecar(
        settings=settings,
        engine=spec.engine,
        engine_port=engine.engine_port,
        namespace=owner.namespace,
        desired=names.adapters,
        report=names.loaded,
        s3_env=storage_env(spec.storage),
        api_key_env=api_key_env(server_key_secret(spec, owner), "FTO_API_KEY"),
    )
    pod["containers"] = [*pod["containers"], sidecar]
    pod["volumes"] = [
        *pod["volumes"],
        {"name": "adapters", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        sync_token_volume(),
    ]
    return pod


def server_deployment_of(spec: ModelServerSpec, owner: ServerOwner, settings: Settings, config_hash: str) -> Manifest:
    names = ServerNames.of(owner.name)
    metadata = _metadata(owner, names.deployment)
    template_metadata = {
        "labels": dict(metadata["labels"]),
        "annotations": {"finetune.dev/serve-config-hash": config_hash},
    }
    pod_spec = server_pod_spec(_server_pod(spec, owner, settings), _placement(spec), service_account=names.sync)
    return server_deployment(metadata, spec.replicas, selector(owner), template_metadata, pod_spec)


def server_bundle(spec: ModelServerSpec, owner: ServerOwner, settings: Settings) -> list[Manifest]:
    """Sync identity, serve config, Service, NetworkPolicy (ingress from the server's namespace and its
    allowedNamespaces), (PDB,) Deployment last with the bundle's hash. The desired list and the report ConfigMap
    are not part of it: they change without touching the pods."""
    name = ServerNames.of(owner.name).deployment
    config = server_config_map(spec, owner)
    deployment = server_deployment_of(spec, owner, settings, content_hash(config["data"]))
    bundle = [
        *sync_rbac(owner),
        config,
        server_service(_metadata(owner, name), selector(owner)),
        server_network_policy(_metadata(owner, name), selector(owner), spec.allowed_namespaces, settings.api_pods),
    ]
    if spec.replicas > 1:
        bundle.append(server_pdb(_metadata(owner, name), selector(owner)))
    deployment["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = content_hash([*bundle, deployment])
    return [*bundle, deployment]
