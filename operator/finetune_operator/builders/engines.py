"""The serving engines, one entry each in `ENGINES`: how each renders a FineTuneJob's own server and a shared
ModelServer's, and what it serves.

`transformers` is the trainer image's own OpenAI-compatible server (it reads serve.json and fetches the model
itself); `vllm` is vLLM's OpenAI server on loopback behind the trainer image's gateway (which holds the Service
port and runs our server's guard), after an init container from the trainer image has fetched the model (or
base and adapter) from S3 into a volume (docs/serving.md). Both kinds of server of one engine get the same
containers (builders.containers) and the same resource defaults; the resources only say what differs: the model
a job's server serves (its published run) and the runtime adapters a shared server holds.

The CRDs' engine enums and task rule, and the specs' literals, are checked against this table
(tests/unit/operator/test_builders.py, test_modelserver_plan.py): adding an engine is one entry here plus its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunejob import StorageSpec
from finetune_operator.api.modelserver import ModelServerSpec
from finetune_operator.api.published import Published
from finetune_operator.builders.common import storage_env
from finetune_operator.builders.containers import (
    ADAPTERS_DIR,
    PORT,
    VLLM_PORT,
    api_key_env,
    fetch_container,
    our_server_container,
    server_resources,
    vllm_device,
    vllm_gateway_container,
    vllm_server_container,
)
from finetune_operator.core.settings import Settings

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)
VLLM_BASE, VLLM_ADAPTER, VLLM_MODEL = "/models/base", "/models/adapter", "/models/model"
ADAPTERS_MOUNT: dict[str, Any] = {"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True}
"""A shared server's engine reads the adapters its sidecar fetched (the volume is the sidecar's to write)."""


@dataclass(frozen=True)
class ServerInputs:
    """What any server pod is rendered from, whichever resource asks for it (a FineTuneJob's serving section or a
    ModelServer's spec): the served name, serve.json's ConfigMap, storage, API key, resources and limits."""

    name: str
    """The model name clients ask for: the FineTuneJob's or the ModelServer's name."""
    config_map: str
    """The ConfigMap holding serve.json (our engine reads it)."""
    storage: StorageSpec
    api_key_secret: str
    requests: dict[str, Any]
    limits: dict[str, Any]
    gpu_resource: str
    max_concurrency: int
    shm_size: str
    settings: Settings


Pod = dict[str, Any]
"""The engine's part of a pod spec: its (init) containers and volumes."""


@dataclass(frozen=True)
class Engine:
    """One serving engine (spec.serving.engine, ModelServer spec.engine).

    `own_pod` renders a FineTuneJob's own server for its published run; `shared_pod` a ModelServer replica's engine
    (its adapters arrive at run time through the sidecar builders.modelserver adds). Both take the resources
    `resources` computes, so the two kinds of server share the engine's defaults.
    """

    name: str
    tasks: frozenset[str]
    gpu: Callable[[Settings], bool]
    """Whether a server pod asks for one GPU of its gpuResource unless its resources say otherwise."""
    memory: Callable[[Settings], str]
    """The server's memory request and limit unless its resources name memory ("": none)."""
    own_pod: Callable[[ServerInputs, dict[str, Any], Published], Pod]
    shared_pod: Callable[[ServerInputs, dict[str, Any], ModelServerSpec], Pod]
    engine_port: int
    """Where the adapters sidecar reaches the engine on loopback (vLLM's own port, behind its gateway)."""

    def resources(self, server: ServerInputs) -> dict[str, Any]:
        gpu, memory = self.gpu(server.settings), self.memory(server.settings)
        return server_resources(server.requests, server.limits, server.gpu_resource, gpu, memory)

    def own(self, server: ServerInputs, published: Published) -> Pod:
        return self.own_pod(server, self.resources(server), published)

    def shared(self, server: ServerInputs, spec: ModelServerSpec) -> Pod:
        return self.shared_pod(server, self.resources(server), spec)


def _ours(server: ServerInputs, resources: dict[str, Any], extra_mounts: Sequence[dict[str, Any]] = ()) -> Pod:
    container = our_server_container(
        settings=server.settings,
        s3_env=storage_env(server.storage),
        api_key_env=api_key_env(server.api_key_secret, "FTO_API_KEY"),
        resources=resources,
        extra_mounts=extra_mounts,
    )
    volumes = [{"name": "config", "configMap": {"name": server.config_map}}, {"name": "work", "emptyDir": {}}]
    return {"containers": [container], "volumes": volumes}


def _ours_own(server: ServerInputs, resources: dict[str, Any], _published: Published) -> Pod:
    """Our own server; it reads the model's URIs from serve.json and fetches them itself."""
    return _ours(server, resources)


def _ours_shared(server: ServerInputs, resources: dict[str, Any], _spec: ModelServerSpec) -> Pod:
    """Our server holding peft adapters on one unmerged base; its admin routes answer loopback only. The preStop
    sleep too: a replica being deleted or rolled keeps answering while its endpoint goes."""
    return _ours(server, resources, [ADAPTERS_MOUNT])


def vllm_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def _vllm(
    server: ServerInputs,
    resources: dict[str, Any],
    copies: Sequence[tuple[str, str]],
    model_args: list[str],
    *,
    extra_env: Sequence[dict[str, Any]] = (),
    extra_mounts: Sequence[dict[str, Any]] = (),
    shared: bool = False,
) -> Pod:
    """vLLM on loopback behind its gateway, after the init container fetched `copies` (uri, folder)."""
    container = vllm_server_container(
        settings=server.settings,
        model_args=model_args,
        max_num_seqs=server.max_concurrency,
        api_key_env=api_key_env(server.api_key_secret, "VLLM_API_KEY"),
        resources=resources,
        extra_env=extra_env,
        extra_mounts=extra_mounts,
    )
    # the gateway holds the Service port, with the same key (the admin key; vLLM's own key upstream)
    gateway = vllm_gateway_container(
        settings=server.settings,
        api_key_env=api_key_env(server.api_key_secret, "FTO_API_KEY"),
        base_model=server.name,
        shared=shared,
    )
    fetch = fetch_container(server.settings, storage_env(server.storage), copies)
    volumes = [
        {"name": "models", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": server.shm_size}},
    ]
    return {"initContainers": [fetch], "containers": [container, gateway], "volumes": volumes}


def _vllm_own(server: ServerInputs, resources: dict[str, Any], published: Published) -> Pod:
    """What to fetch where, and the vLLM flags that serve it (docs/serving.md).

    An adapter is served on top of its base model under the job's name (the base itself as `<name>-base`),
    with the adapter folder's tokenizer: the one the trainer saved, with the chat template it trained with
    (vLLM loads one tokenizer per server; the trainer never changes the vocabulary, so the base shares it).
    Full or merged weights are one folder with their own tokenizer, served as a model.
    """
    if not published.adapter:
        args = ["--model", VLLM_MODEL, "--served-model-name", server.name]
        return _vllm(server, resources, [(published.model_uri, VLLM_MODEL)], args)
    args = [
        "--model",
        VLLM_BASE,
        "--served-model-name",
        f"{server.name}-base",
        "--tokenizer",
        VLLM_ADAPTER,
        "--enable-lora",
        "--lora-modules",
        f"{server.name}={VLLM_ADAPTER}",
        "--max-loras",
        "1",
        "--max-lora-rank",
        str(vllm_rank(published.lora_rank)),
    ]
    copies = [(published.base_model_uri, VLLM_BASE), (published.model_uri, VLLM_ADAPTER)]
    return _vllm(server, resources, copies, args)


def _vllm_shared(server: ServerInputs, resources: dict[str, Any], spec: ModelServerSpec) -> Pod:
    """vLLM with runtime LoRA updating; the base model fetched by the trainer image's `fetch` first."""
    args = [
        "--model",
        VLLM_BASE,
        "--served-model-name",
        server.name,
        "--enable-lora",
        "--max-loras",
        str(spec.max_adapters),
        "--max-cpu-loras",
        str(spec.max_adapters),
        "--max-lora-rank",
        str(vllm_rank(spec.max_lora_rank)),
    ]
    # vLLM's runtime /v1/load_lora_adapter: on loopback only (the gateway never forwards it), for the sidecar,
    # with VLLM_API_KEY; the sidecar re-converges any change not in the desired list (docs/serving.md)
    runtime_lora = [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}]
    copies = [(spec.base_model_uri, VLLM_BASE)]
    return _vllm(server, resources, copies, args, extra_env=runtime_lora, extra_mounts=[ADAPTERS_MOUNT], shared=True)


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine(
            name="transformers",
            tasks=frozenset({"causal-lm", "sequence-classification"}),
            gpu=lambda _settings: False,
            memory=lambda _settings: "",
            own_pod=_ours_own,
            shared_pod=_ours_shared,
            engine_port=PORT,
        ),
        Engine(
            name="vllm",
            tasks=frozenset({"causal-lm"}),
            gpu=lambda settings: vllm_device(settings).gpu,
            memory=lambda settings: vllm_device(settings).memory,
            own_pod=_vllm_own,
            shared_pod=_vllm_shared,
            engine_port=VLLM_PORT,
        ),
    )
}
