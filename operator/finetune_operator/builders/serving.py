"""A FineTuneJob's own server for its published model: ConfigMap (serve.json), Deployment, Service, NetworkPolicy
and (with more than one replica) PodDisruptionBudget.

The engine (spec.serving.engine) renders the pod from builders.engines; the Service, the PDB and the rolling
Deployment are the ones a ModelServer gets too (builders.workload). Rolls are triggered by a hash of serve.json on
the pod template; the Deployment carries a hash of the whole bundle, so the operator re-applies the bundle only
when something in it changed.
"""

from __future__ import annotations

import json
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.hashing import content_hash
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH, LABEL_COMPONENT, LABEL_RUN, LABEL_UID, Names
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.api.published import Published
from finetune_operator.builders.apikey import ANNOTATION_KEY_SHA256
from finetune_operator.builders.common import metadata, placement, pod_metadata
from finetune_operator.builders.containers import PORT, SERVE_KEY
from finetune_operator.builders.engines import ENGINES, ServerInputs
from finetune_operator.builders.workload import (
    server_deployment,
    server_network_policy,
    server_pdb,
    server_pod_spec,
    server_service,
)
from finetune_operator.core.settings import Settings

__all__ = ["Published", "endpoint_url", "key_secret_name", "serve_config", "serving_bundle", "serving_config_map"]

COMPONENT = "serving"


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


def key_secret_name(spec: FineTuneJobSpec, owner: Owner) -> str:
    """The Secret (key apiKey) the job's server reads its key from: serving.apiKeySecret, else the one the
    operator generates (`<name>-api-key`); "" only with serving.allowUnauthenticated."""
    if spec.serving.api_key_secret:
        return spec.serving.api_key_secret
    return "" if spec.serving.allow_unauthenticated else Names.of(owner.name).api_key


def server_inputs(spec: FineTuneJobSpec, owner: Owner, settings: Settings) -> ServerInputs:
    """The job's serving section in the engines' terms."""
    return ServerInputs(
        name=owner.name,
        config_map=Names.of(owner.name).serving_config,
        storage=spec.storage,
        api_key_secret=key_secret_name(spec, owner),
        requests=spec.serving.resources.requests,
        limits=spec.serving.resources.limits,
        gpu_resource=spec.resources.gpu_resource,
        max_concurrency=spec.serving.max_concurrency,
        shm_size=str(spec.resources.shm_size),
        settings=settings,
    )


def serving_deployment(
    spec: FineTuneJobSpec,
    owner: Owner,
    published: Published,
    settings: Settings,
    config_hash: str,
    key_sha256: str = "",
) -> Manifest:
    names = Names.of(owner.name)
    engine_pod = ENGINES[spec.serving.engine].own(server_inputs(spec, owner, settings), published)
    labels = {**metadata(owner, names.serving, COMPONENT)["labels"], LABEL_RUN: str(published.run)}
    return server_deployment(
        metadata(owner, names.serving, COMPONENT, published.run),
        spec.serving.replicas,
        _selector(owner),
        pod_metadata(spec, labels, {"finetune.dev/serve-config-hash": config_hash, **_key_annotation(key_sha256)}),
        server_pod_spec(engine_pod, placement(spec)),
    )


def _key_annotation(key_sha256: str) -> dict[str, str]:
    """A generated key's hash on the pod template: a new key (its Secret deleted and made again) rolls the pods,
    which read the key from the Secret only when they start. Only the hash: the key stays in the Secret."""
    return {ANNOTATION_KEY_SHA256: key_sha256} if key_sha256 else {}


def serving_bundle(
    spec: FineTuneJobSpec, owner: Owner, published: Published, settings: Settings, key_sha256: str = ""
) -> list[Manifest]:
    """ConfigMap, Service, NetworkPolicy (ingress from the job's own namespace only), (PDB,) Deployment: the
    Deployment last, stamped with the whole bundle's hash. `key_sha256`: the generated key's hash ("" for a
    user's Secret or none)."""
    names = Names.of(owner.name)
    config_map = serving_config_map(spec, owner, published)
    config_hash = content_hash(config_map["data"])
    deployment = serving_deployment(spec, owner, published, settings, config_hash, key_sha256)
    bundle = [
        config_map,
        server_service(metadata(owner, names.serving, COMPONENT), _selector(owner)),
        server_network_policy(metadata(owner, names.serving, COMPONENT), _selector(owner), (), settings.api_pods),
    ]
    if spec.serving.replicas > 1:
        bundle.append(server_pdb(metadata(owner, names.serving, COMPONENT), _selector(owner)))
    bundle_hash = content_hash([*bundle, deployment])
    deployment["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = bundle_hash
    return [*bundle, deployment]
