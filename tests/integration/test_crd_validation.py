"""The real API server enforces the FineTuneJob schema: bad manifests are refused with the field named,
every example is accepted, and `kubectl explain` teaches the fields."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import GROUP, PLURAL, ROOT, VERSION, ftj_manifest

pytestmark = pytest.mark.cluster

SPEC = ftj_manifest("bad")["spec"]


ADAPTER = "s3://artifacts/sft/run-1/model/"
"""A previous run's published adapter (baseModel.adapter)."""


def _with(path: str, value: Any) -> dict[str, Any]:
    """The valid spec with `path` (dotted; [n] for list items) set to `value` (None deletes it)."""
    spec: dict[str, Any] = copy.deepcopy(SPEC)
    keys = path.split(".")
    node = spec
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return spec


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("split-sums-to-one", _with("dataset.split", {"validation": 0.5, "test": 0.5}), "spec.dataset.split"),
    ("split-negative", _with("dataset.split", {"validation": -0.1}), "spec.dataset.split.validation"),
    (
        "qlora-without-gpu",
        {**_with("method", {"type": "qlora"}), "resources": {"gpus": 0}},
        "spec.method.type",
    ),
    ("model-uri-not-s3", _with("baseModel.uri", "/data/models/llama"), "spec.baseModel.uri"),
    ("model-uri-hub-no-name", _with("baseModel.uri", "hf://meta-llama"), "spec.baseModel.uri"),
    ("model-uri-hub-path", _with("baseModel.uri", "hf://meta-llama/Llama-3-8B/sub"), "spec.baseModel.uri"),
    ("model-revision-on-s3", _with("baseModel.revision", "main"), "spec.baseModel"),
    ("model-token-on-s3", _with("baseModel.tokenSecret", {"name": "hf"}), "spec.baseModel"),
    ("train-uri-hub-model", _with("dataset.train.uri", "hf://acme/data"), "spec.dataset.train.uri"),
    ("train-uri-hub-dot-dot", _with("dataset.train.uri", "hf://datasets/acme/d/../x"), "spec.dataset.train.uri"),
    ("train-revision-empty", _with("dataset.train", {"uri": "hf://datasets/a/b", "revision": ""}), "revision"),
    ("model-revision-space", _with("baseModel", {"uri": "hf://a/b", "revision": "my branch"}), "revision"),
    ("model-uri-bad-bucket", _with("baseModel.uri", "s3://Bad_Bucket/x/"), "spec.baseModel.uri"),
    (
        "train-uri-http",
        _with("dataset.train.uri", "https://example.com/train.jsonl"),
        "spec.dataset.train.uri",
    ),
    ("train-uri-no-key", _with("dataset.train.uri", "s3://data"), "spec.dataset.train.uri"),
    ("test-uri-bad", _with("dataset.test", {"uri": "file:///tmp/test.jsonl"}), "spec.dataset.test.uri"),
    ("output-no-slash", _with("output.uri", "s3://artifacts/run"), "spec.output.uri"),
    # segments that leave their folder once a key is joined onto a local one (S3 stores them verbatim)
    ("model-uri-dot-dot", _with("baseModel.uri", "s3://models/../team-b/llama/"), "spec.baseModel.uri"),
    ("model-uri-double-slash", _with("baseModel.uri", "s3://models//llama/"), "spec.baseModel.uri"),
    ("train-uri-dot-dot", _with("dataset.train.uri", "s3://data/x/../../t.jsonl"), "spec.dataset.train.uri"),
    ("test-uri-double-slash", _with("dataset.test", {"uri": "s3://data//test.jsonl"}), "spec.dataset.test.uri"),
    ("output-dot-dot", _with("output.uri", "s3://artifacts/team-a/../team-b/"), "spec.output.uri"),
    ("output-dot", _with("output.uri", "s3://artifacts/./team-a/"), "spec.output.uri"),
    ("output-double-slash", _with("output.uri", "s3://artifacts//team-a/"), "spec.output.uri"),
    ("output-missing", _with("output", None), "spec.output"),
    ("train-missing", _with("dataset.train", None), "spec.dataset.train"),
    ("schema-unknown", _with("dataset.schema", "tsv"), "spec.dataset.schema"),
    (
        "classification-without-labels",
        {
            **_with("baseModel.task", "sequence-classification"),
            "dataset": {**SPEC["dataset"], "schema": "classification"},
        },
        "spec.baseModel",
    ),
    (
        "labels-count-mismatch",
        {
            **_with(
                "baseModel",
                {"uri": "s3://m/x/", "task": "sequence-classification", "numLabels": 3, "labels": ["a", "b"]},
            ),
            "dataset": {**SPEC["dataset"], "schema": "classification"},
        },
        "spec.baseModel",
    ),
    ("labels-on-causal-lm", _with("baseModel.numLabels", 2), "spec.baseModel"),
    ("classification-schema-on-causal-lm", _with("dataset.schema", "classification"), "spec.baseModel.task"),
    ("method-unknown", _with("method", {"type": "prefix-tuning"}), "spec.method.type"),
    ("objective-unknown", _with("method", {"type": "lora", "objective": "ppo"}), "spec.method.objective"),
    ("dpo-with-chat-data", _with("method", {"type": "lora", "objective": "dpo"}), "spec.method.objective"),
    (
        "preference-data-with-sft",
        {**_with("dataset.schema", "openai-preference"), "method": {"type": "lora"}},
        "spec.dataset.schema",
    ),
    ("dpo-settings-with-sft", _with("method", {"type": "lora", "dpo": {"beta": 0.2}}), "spec.method.dpo"),
    (
        "dpo-beta-zero",
        {
            **_with("method", {"objective": "dpo", "dpo": {"beta": 0}}),
            "dataset": {**SPEC["dataset"], "schema": "preference"},
        },
        "spec.method.dpo.beta",
    ),
    (
        "dpo-label-smoothing-half",
        {
            **_with("method", {"objective": "dpo", "dpo": {"labelSmoothing": 0.5}}),
            "dataset": {**SPEC["dataset"], "schema": "preference"},
        },
        "spec.method.dpo.labelSmoothing",
    ),
    (
        "dpo-ipo-label-smoothing",
        {
            **_with("method", {"objective": "dpo", "dpo": {"lossType": "ipo", "labelSmoothing": 0.1}}),
            "dataset": {**SPEC["dataset"], "schema": "preference"},
        },
        "spec.method.dpo.labelSmoothing",
    ),
    ("simpo-settings-with-dpo", _with("method", {"objective": "dpo", "simpo": {"gamma": 1}}), "spec.method.simpo"),
    (
        "simpo-beta-zero",
        {
            **_with("method", {"objective": "simpo", "simpo": {"beta": 0}}),
            "dataset": {**SPEC["dataset"], "schema": "preference"},
        },
        "spec.method.simpo.beta",
    ),
    (
        "simpo-label-smoothing-half",
        {
            **_with("method", {"objective": "simpo", "simpo": {"labelSmoothing": 0.5}}),
            "dataset": {**SPEC["dataset"], "schema": "preference"},
        },
        "spec.method.simpo.labelSmoothing",
    ),
    ("simpo-with-chat-data", _with("method", {"type": "lora", "objective": "simpo"}), "spec.method.objective"),
    ("base-adapter-without-merge", _with("baseModel.adapter", ADAPTER), "spec.baseModel.adapter"),
    ("base-adapter-not-s3", _with("baseModel.adapter", "hf://org/adapter"), "spec.baseModel.adapter"),
    ("lora-rank-zero", _with("method", {"type": "lora", "lora": {"rank": 0}}), "spec.method.lora.rank"),
    (
        "lora-dropout-one",
        _with("method", {"type": "lora", "lora": {"dropout": 1.0}}),
        "spec.method.lora.dropout",
    ),
    (
        "learning-rate-zero",
        _with("hyperparameters", {"learningRate": 0}),
        "spec.hyperparameters.learningRate",
    ),
    ("batch-size-zero", _with("hyperparameters", {"batchSize": 0}), "spec.hyperparameters.batchSize"),
    (
        "scheduler-unknown",
        _with("hyperparameters", {"lrScheduler": "exponential"}),
        "spec.hyperparameters.lrScheduler",
    ),
    ("precision-unknown", _with("hyperparameters", {"precision": "int4"}), "spec.hyperparameters.precision"),
    (
        "tracking-uri-with-password",
        _with("tracking", {"mlflow": {"trackingUri": "http://me:pw@mlflow:5000"}}),
        "spec.tracking.mlflow.trackingUri",
    ),
    (
        "tracking-uri-not-http",
        _with("tracking", {"mlflow": {"trackingUri": "file:///mlruns"}}),
        "spec.tracking.mlflow.trackingUri",
    ),
    ("tracking-uri-missing", _with("tracking", {"mlflow": {"experiment": "x"}}), "spec.tracking.mlflow.trackingUri"),
    (
        "tracking-secret-bad-name",
        _with("tracking", {"mlflow": {"trackingUri": "http://mlflow:5000", "credentialsSecret": "Bad_Name"}}),
        "spec.tracking.mlflow.credentialsSecret",
    ),
    ("max-seq-length-tiny", _with("dataset.maxSeqLength", 4), "spec.dataset.maxSeqLength"),
    ("gpus-negative", _with("resources.gpus", -1), "spec.resources.gpus"),
    ("gpu-resource-malformed", _with("resources.gpuResource", "gpu"), "spec.resources.gpuResource"),
    ("memory-malformed", _with("resources.memory", "lots"), "spec.resources.memory"),
    (
        "toleration-operator",
        _with("resources.tolerations", [{"key": "a", "operator": "Maybe"}]),
        "spec.resources.tolerations[0].operator",
    ),
    ("workers-zero", _with("distributed", {"workers": 0}), "spec.distributed.workers"),
    (
        "workers-without-gpus",
        {**_with("distributed", {"workers": 2}), "resources": {"gpus": 0}},
        "spec.distributed.workers",
    ),
    ("checkpoint-keep-zero", _with("checkpointing", {"keep": 0}), "spec.checkpointing.keep"),
    (
        "gate-rule-without-bound",
        _with("evaluation", {"gate": [{"metric": "test_loss"}]}),
        "spec.evaluation.gate[0]",
    ),
    (
        "gate-min-above-max",
        _with("evaluation", {"gate": [{"metric": "test_loss", "min": 2, "max": 1}]}),
        "spec.evaluation.gate[0]",
    ),
    (
        "gate-metric-name",
        _with("evaluation", {"gate": [{"metric": "loss", "max": 1}]}),
        "spec.evaluation.gate[0].metric",
    ),
    ("storage-endpoint-not-url", _with("storage", {"endpoint": "minio:9000"}), "spec.storage.endpoint"),
    (
        "secret-name-invalid",
        _with("storage", {"credentialsSecret": "My_Secret"}),
        "spec.storage.credentialsSecret",
    ),
    ("serving-engine-unknown", _with("serving", {"enabled": True, "engine": "tgi"}), "spec.serving.engine"),
    ("serving-replicas-zero", _with("serving", {"enabled": True, "replicas": 0}), "spec.serving.replicas"),
    (
        "vllm-for-classifier",
        {
            **_with("baseModel", {"uri": "s3://m/x/", "task": "sequence-classification", "numLabels": 2}),
            "dataset": {**SPEC["dataset"], "schema": "classification"},
            "serving": {"enabled": True, "engine": "vllm"},
        },
        "spec.serving.engine",
    ),
    ("queue-name-invalid", _with("queueName", "Team Queue"), "spec.queueName"),
    ("columns-unknown-key", _with("dataset.columns", {"question": "q"}), "spec.dataset.columns"),
    (
        "reserved-pod-label",
        _with("podMetadata", {"labels": {"finetune.dev/run": "7"}}),
        "spec.podMetadata.labels",
    ),
    ("epochs-zero", _with("hyperparameters", {"epochs": 0}), "spec.hyperparameters.epochs"),
    (
        "no-test-split-and-no-test-file",
        _with("dataset.split", {"validation": 0.1, "test": 0.0}),
        "spec.dataset.split.test",
    ),
    ("column-not-in-schema", _with("dataset.columns", {"prompt": "question"}), "spec.dataset.columns"),
    (
        "early-stopping-without-interval",
        _with("evaluation", {"earlyStopping": {"patience": 2}}),
        "spec.evaluation.earlyStopping",
    ),
    (
        "generation-no-samples",
        _with("evaluation", {"generation": {"maxSamples": 0}}),
        "spec.evaluation.generation.maxSamples",
    ),
    (
        "merge-full-weights",
        _with("method", {"type": "full", "mergeWeights": True}),
        "spec.method.mergeWeights",
    ),
    (
        "one-label",
        {
            **_with("baseModel", {"uri": "s3://m/x/", "task": "sequence-classification", "labels": ["a"]}),
            "dataset": {**SPEC["dataset"], "schema": "classification"},
        },
        "spec.baseModel.labels",
    ),
]


def _create(cluster: Any, namespace: str, spec: dict[str, Any], strict: bool = False) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    kwargs = {"field_validation": "Strict"} if strict else {}
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, **kwargs)


def test_at_least_25_invalid_cases() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize(("spec", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    cluster: Any, crd: str, namespace: str, spec: dict[str, Any], field: str
) -> None:
    from kubernetes import client

    with pytest.raises(client.ApiException) as raised:
        _create(cluster, namespace, spec)
    assert raised.value.status == 422, raised.value.body
    assert field in str(raised.value.body), raised.value.body


def test_unknown_field_is_rejected_in_strict_mode(cluster: Any, crd: str, namespace: str) -> None:
    from kubernetes import client

    with pytest.raises(client.ApiException) as raised:
        _create(cluster, namespace, {**SPEC, "learningRate": 0.1}, strict=True)
    assert "spec.learningRate" in str(raised.value.body)


def test_dots_inside_a_segment_are_accepted(cluster: Any, crd: str, namespace: str) -> None:
    spec = _with("output.uri", "s3://artifacts/v1..2/.hidden/")
    spec["baseModel"]["uri"] = "s3://models/llama-3.1/"
    _create(cluster, namespace, spec)


def test_hub_sources_with_revision_and_token_are_accepted(cluster: Any, crd: str, namespace: str) -> None:
    spec = _with("baseModel", {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "releases/v1.0"})
    spec["baseModel"]["tokenSecret"] = {"name": "hf-token"}
    spec["dataset"]["train"] = {"uri": "hf://datasets/acme/chat-data", "revision": "main"}
    spec["dataset"]["test"] = {
        "uri": "hf://datasets/acme/chat-data/data/test-",
        "tokenSecret": {"name": "t", "key": "k"},
    }
    _create(cluster, namespace, spec)
    created = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bad")
    assert created["spec"]["baseModel"]["tokenSecret"] == {"name": "hf-token", "key": "token"}  # the default key


@pytest.mark.parametrize(
    "uri", ["s3://models/../team-b/llama/", "s3://models//llama/", "s3://models/x/.", "/models/../etc/", "/models//x"]
)
def test_a_model_server_base_model_uri_with_unsafe_segments_is_rejected(
    cluster: Any, crd: str, namespace: str, uri: str
) -> None:
    from kubernetes import client

    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelServer",
        "metadata": {"name": "shared"},
        "spec": {"baseModelUri": uri},
    }
    with pytest.raises(client.ApiException) as raised:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", body)
    assert raised.value.status == 422 and "spec.baseModelUri" in str(raised.value.body), raised.value.body
    body["spec"] = {"baseModelUri": "s3://models/llama-3.1/"}
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", body)


def test_valid_manifest_gets_the_defaults(cluster: Any, crd: str, namespace: str) -> None:
    _create(cluster, namespace, SPEC)
    spec = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bad")["spec"]
    assert spec["method"] == {
        "type": "lora",
        "objective": "sft",
        "mergeWeights": False,
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]},
    }
    assert spec["dataset"]["split"] == {"validation": 0.1, "test": 0.1, "seed": 42}
    assert spec["serving"]["enabled"] is False and spec["suspend"] is False


def test_a_dpo_manifest_gets_the_dpo_defaults(cluster: Any, crd: str, namespace: str) -> None:
    dpo = {**_with("method", {"objective": "dpo", "dpo": {}}), "dataset": {**SPEC["dataset"], "schema": "preference"}}
    _create(cluster, namespace, dpo)
    spec = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bad")["spec"]
    assert spec["method"]["objective"] == "dpo"
    assert spec["method"]["dpo"] == {"beta": 0.1, "lossType": "sigmoid", "labelSmoothing": 0}


def test_a_base_adapter_with_merged_weights_is_admitted(cluster: Any, crd: str, namespace: str) -> None:
    body = {**_with("baseModel.adapter", ADAPTER), "method": {"type": "lora", "mergeWeights": True}}
    _create(cluster, namespace, body)
    spec = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bad")["spec"]
    assert spec["baseModel"]["adapter"] == ADAPTER


def test_a_simpo_manifest_gets_the_simpo_defaults(cluster: Any, crd: str, namespace: str) -> None:
    simpo = {
        **_with("method", {"objective": "simpo", "simpo": {}}),
        "dataset": {**SPEC["dataset"], "schema": "preference"},
    }
    _create(cluster, namespace, simpo)
    spec = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bad")["spec"]
    assert spec["method"]["objective"] == "simpo" and "dpo" not in spec["method"]
    assert spec["method"]["simpo"] == {"beta": 2.0, "gamma": 0.5, "labelSmoothing": 0}


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_is_accepted(cluster: Any, crd: str, namespace: str, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "FineTuneJob":
            created = cluster.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, doc, field_validation="Strict"
            )
            assert created["metadata"]["generation"] == 1


def _kubectl() -> str:
    tools = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "bin" / "tools"
    found = shutil.which("kubectl") or (str(tools / "kubectl") if (tools / "kubectl").exists() else None)
    assert found, "kubectl not found (make cluster-up installs it under $FTO_CACHE/bin/tools)"
    return found


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("ftj.spec.dataset", "Where the data is and how to read it"),
        ("ftj.spec.dataset.split.test", "held out for test"),
        ("ftj.spec.evaluation.gate", "must all hold"),
        ("ftj.status.endpoint", "OpenAI-compatible"),
    ],
)
def test_kubectl_explain_teaches_the_fields(cluster: Any, crd: str, field: str, expected: str, tmp_path: Path) -> None:
    def explain() -> subprocess.CompletedProcess[str]:
        # its own discovery cache: a CRD (re)installed by an earlier test can be served a moment before the API
        # server's discovery lists it, and kubectl's shared cache would keep that answer (seen once: "the server
        # doesn't have a resource type")
        command = [_kubectl(), "--kubeconfig", str(cluster.kubeconfig), "--cache-dir", str(tmp_path), "explain", field]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    deadline = time.monotonic() + 20
    result = explain()
    while "doesn't have a resource type" in result.stderr and time.monotonic() < deadline:
        time.sleep(1)
        result = explain()
    assert result.returncode == 0, result.stderr
    assert expected in " ".join(result.stdout.split()), result.stdout


def test_printer_columns(cluster: Any, crd: str, namespace: str) -> None:
    _create(cluster, namespace, SPEC)
    result = subprocess.run(
        [_kubectl(), "--kubeconfig", str(cluster.kubeconfig), "get", "ftj", "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    header = result.stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "RUN", "PROGRESS", "LOSS", "GATE", "ENDPOINT", "AGE"], result.stdout
