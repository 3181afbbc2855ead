"""The typed ModelServer spec and what a FineTuneJob and a server both name: the kind, the reference from
`serving.server`, an adapter's model name, one entry of the desired list.

Why apart from the server's planner: the builders render a server's objects from this spec, and the FineTuneJob
side resolves `serving.server` with it; neither should import the server's control logic for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from finetune_operator.api.base import SpecModel
from finetune_operator.api.finetunejob import ServingResourcesSpec, StorageSpec, Toleration
from finetune_operator.api.uris import SafeUri

SERVER_KIND = "ModelServer"
SERVER_PLURAL = "modelservers"


class ModelServerSpec(SpecModel):
    """crds/modelserver.yaml's spec (defaults repeat the CRD's; tests compare the two field by field)."""

    base_model_uri: SafeUri
    engine: Literal["transformers", "vllm"] = "transformers"
    replicas: int = 1
    max_adapters: int = 8
    max_lora_rank: int = 16
    max_concurrency: int = 8
    api_key_secret: str = ""
    """The admin key's Secret (key apiKey); empty: the operator generates one unless allow_unauthenticated."""
    allow_unauthenticated: bool = False
    allowed_namespaces: list[str] = []
    resources: ServingResourcesSpec = ServingResourcesSpec()
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    storage: StorageSpec = StorageSpec()

    def allows(self, namespace: str, own_namespace: str) -> bool:
        """Tenancy: a server serves its own namespace, and others only when it lists them."""
        return namespace == own_namespace or namespace in self.allowed_namespaces


def parse_server_spec(raw: dict[str, Any]) -> ModelServerSpec:
    """Parse the `spec` of a ModelServer body (raises pydantic.ValidationError)."""
    return ModelServerSpec.model_validate(raw)


def server_ref(reference: str, namespace: str) -> tuple[str, str]:
    """`serving.server` of a FineTuneJob in `namespace`: NAME or NAMESPACE/NAME -> (namespace, name)."""
    if "/" in reference:
        other, _, name = reference.partition("/")
        return other, name
    return namespace, reference


def adapter_name(job_namespace: str, job_name: str, server_namespace: str) -> str:
    """The model name an adapter answers to: the FineTuneJob's name, prefixed by its namespace when it comes
    from another one (two teams' `bot`s must not collide on one server)."""
    return job_name if job_namespace == server_namespace else f"{job_namespace}/{job_name}"


@dataclass(frozen=True)
class DesiredAdapter:
    """One entry of the server's desired list (the ConfigMap every replica converges to)."""

    name: str
    job: str  # namespace/name of the FineTuneJob
    run: int
    uri: str
    rank: int
    key_sha256: str
    """The hex SHA-256 of the FineTuneJob's own API key: the server admits that key for this adapter only
    (its own key, the admin key, reaches every adapter). A hash, so the desired list holds no secret."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "finetuneJob": self.job,
            "run": self.run,
            "uri": self.uri,
            "rank": self.rank,
            "keySha256": self.key_sha256,
        }


def reference_of(body: dict[str, Any]) -> tuple[str, str] | None:
    """The (namespace, name) of the ModelServer a FineTuneJob body names, or None (no shared serving)."""
    serving = (body.get("spec") or {}).get("serving") or {}
    reference = str(serving.get("server") or "")
    return server_ref(reference, body["metadata"]["namespace"]) if reference else None
