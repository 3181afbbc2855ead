"""Pieces every child manifest shares: owner reference, metadata, S3 environment, pod hardening, placement.

Pure functions returning plain dicts (the JSON the API server takes), so golden tests can compare YAML.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api.finetunejob import ETAG_MD5_ENV, FineTuneJobSpec, StorageSpec
from finetune_operator.api.labels import ANNOTATION_FULL_NAME, child_labels
from finetune_operator.api.objects import Owner

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_CREDENTIAL_KEYS = ("AWS_SESSION_TOKEN",)


def metadata(
    owner: Owner, name: str, component: str, run: int | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """Metadata of a child: namespace, labels, owner reference and the full FineTuneJob name."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner.name, owner.uid, component, run),
        "annotations": {ANNOTATION_FULL_NAME: owner.name, **(annotations or {})},
        "ownerReferences": [owner.reference()],
    }


def s3_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """AWS_* variables of a FineTuneJob's storage section (its trainer, its server, their fetch step)."""
    return storage_env(spec.storage)


def storage_env(storage: StorageSpec) -> list[dict[str, Any]]:
    """AWS_* variables: credentials from the named secret (or none: pod identity), endpoint and region, and
    `FTO_S3_ETAG_MD5=off` when the store's ETags are not MD5s (`etagIsMd5: false`; nothing when true, the
    trainer's default). One shape for every pod that reaches S3, whichever resource's storage section it comes
    from: trainer, validation step, server, adapter sidecar and fetch step all download through the trainer
    image's storage module, which reads the variable."""
    env: list[dict[str, Any]] = []
    secret = storage.credentials_secret
    if secret:
        for key in CREDENTIAL_KEYS:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        for key in OPTIONAL_CREDENTIAL_KEYS:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}})
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    if not storage.etag_is_md5:
        env.append({"name": ETAG_MD5_ENV, "value": "off"})
    return env


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def placement(spec: FineTuneJobSpec) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity of the pods, only the ones that are set."""
    out: dict[str, Any] = {}
    resources = spec.resources
    if resources.node_selector:
        out["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        out["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in resources.tolerations
        ]
    if resources.affinity:
        out["affinity"] = resources.affinity
    return out


def pod_metadata(
    spec: FineTuneJobSpec, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """Pod template metadata: the user's podMetadata first, the operator's labels over them."""
    return {
        "labels": {**spec.pod_metadata.labels, **labels},
        "annotations": {**spec.pod_metadata.annotations, **(annotations or {})},
    }
