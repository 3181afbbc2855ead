"""What the children must carry, asserted field by field (the golden files pin the rest)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from finetune_operator.api.finetunejob import placement_spec_hash, training_spec_hash
from finetune_operator.api.labels import KUEUE_QUEUE_LABEL
from finetune_operator.api.objects import Owner
from finetune_operator.builders.rbac import progress_config_map, trainer_role
from finetune_operator.builders.serving import Published, serving_bundle
from finetune_operator.builders.trainer_config import trainer_config_map
from finetune_operator.builders.training import training_job, workers_service
from finetune_operator.core.settings import Settings
from pydantic import ValidationError

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test", backoff_limit=4)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def test_job_requests_and_limits_gpus_and_memory() -> None:
    job = training_job(
        spec(resources={"gpus": 2, "gpuResource": "amd.com/gpu", "memory": "48Gi"}), OWNER, 1, "h", SETTINGS
    )
    resources = _container(job)["resources"]
    assert resources["requests"]["amd.com/gpu"] == resources["limits"]["amd.com/gpu"] == "2"
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "48Gi"


def test_cpu_training_requests_no_gpu() -> None:
    resources = _container(training_job(spec(resources={"gpus": 0}), OWNER, 1, "h", SETTINGS))["resources"]
    assert "nvidia.com/gpu" not in resources["requests"] and "nvidia.com/gpu" not in resources["limits"]


def test_job_failure_policy_backoff_and_restart_policy() -> None:
    job = training_job(spec(), OWNER, 1, "h", SETTINGS)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42, 137]},
    } in rules
    assert rules[0]["action"] == "Ignore" and rules[0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert job["spec"]["backoffLimit"] == 4
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_pod_is_hardened_and_has_shm_and_work_volumes() -> None:
    job = training_job(spec(resources={"shmSize": "2Gi"}), OWNER, 1, "h", SETTINGS)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = _container(job)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert "emptyDir" in volumes["work"]
    assert _container(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_credentials_come_from_the_secret_or_not_at_all() -> None:
    env = _container(
        training_job(
            spec(storage={"credentialsSecret": "creds", "endpoint": "http://s3:9000", "region": "eu-1"}),
            OWNER,
            1,
            "h",
            SETTINGS,
        )
    )["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "creds",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert by_name["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert by_name["AWS_ENDPOINT_URL"]["value"] == "http://s3:9000"
    assert by_name["AWS_DEFAULT_REGION"]["value"] == "eu-1"
    bare = _container(training_job(spec(storage={}), OWNER, 1, "h", SETTINGS))["env"]
    assert not [e for e in bare if e["name"].startswith("AWS_")]


def test_placement_and_priority_are_passed_through() -> None:
    affinity: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    }
    pod = training_job(
        spec(
            resources={
                "nodeSelector": {"pool": "a100"},
                "priorityClassName": "high",
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "affinity": affinity,
            }
        ),
        OWNER,
        1,
        "h",
        SETTINGS,
    )["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["priorityClassName"] == "high"
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}] and pod["affinity"] == affinity


def test_kueue_job_is_created_suspended_with_the_queue_label() -> None:
    job = training_job(spec(queueName="team-q"), OWNER, 1, "h", SETTINGS)
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-q"
    assert job["spec"]["suspend"] is True
    assert training_job(spec(), OWNER, 1, "h", SETTINGS)["spec"]["suspend"] is False
    assert training_job(spec(suspend=True), OWNER, 1, "h", SETTINGS)["spec"]["suspend"] is True


def test_children_carry_owner_reference_and_run_labels() -> None:
    job = training_job(spec(), OWNER, 3, "h", SETTINGS)
    assert job["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["finetune.dev/run"] == "3" and pod_labels["finetune.dev/job-uid"] == OWNER.uid


def test_pod_metadata_is_added_but_cannot_replace_operator_labels() -> None:
    job = training_job(
        spec(
            podMetadata={
                "labels": {"team": "a", "finetune.dev/run": "9"},
                "annotations": {"sidecar.istio.io/inject": "false"},
            }
        ),
        OWNER,
        1,
        "h",
        SETTINGS,
    )
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "a" and meta["labels"]["finetune.dev/run"] == "1"
    assert meta["annotations"]["sidecar.istio.io/inject"] == "false"


def test_distributed_job_is_indexed_with_rank_and_stable_master() -> None:
    s = spec(distributed={"workers": 3}, resources={"gpus": 4})
    job = training_job(s, OWNER, 2, "h", SETTINGS)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    service = workers_service(s, OWNER, 2)
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in _container(job)["env"]}
    assert env["MASTER_ADDR"]["value"] == f"support-bot-r2-0.{service['metadata']['name']}.team-a.svc"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    # The trainer launches torchrun itself (exit codes 42/75 survive); the pod only supplies the topology.
    assert _container(job)["command"] == [
        "python",
        "-m",
        "finetune_trainer",
        "train",
        "--config",
        "/etc/finetune/config.json",
    ]
    assert env["MASTER_PORT"]["value"] == "29500"
    config = json.loads(trainer_config_map(s, OWNER, 2)["data"]["config.json"])
    assert config["distributed"] == {"workers": 3, "processesPerWorker": 4, "sharding": "none"}
    assert set(service["spec"]["selector"].items()) <= set(pod_labels(job).items())


def pod_labels(job: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = job["spec"]["template"]["metadata"]["labels"]
    return labels


def test_trainer_config_follows_the_contract() -> None:
    cm = trainer_config_map(spec(), OWNER, 2)
    config = json.loads(cm["data"]["config.json"])
    assert config["kind"] == "TrainerConfig" and config["job"]["run"] == 2
    assert config["output"]["runUri"] == "s3://artifacts/team-a/support-bot/run-2/"
    assert set(config) == {
        "apiVersion",
        "kind",
        "job",
        "baseModel",
        "dataset",
        "method",
        "hyperparameters",
        "checkpointing",
        "evaluation",
        "distributed",
        "output",
    }
    assert config["evaluation"] == {"compareBaseModel": False}
    assert cm["metadata"]["name"] == "support-bot-r2-config"


def test_role_may_only_patch_its_own_progress_config_map() -> None:
    """Nothing on the FineTuneJob (no status: the operator alone writes it), one ConfigMap by name."""
    rules = trainer_role(OWNER)["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["support-bot-progress"], "verbs": ["patch"]}
    ]
    channel = progress_config_map(OWNER)
    assert channel["metadata"]["name"] == "support-bot-progress" and channel["data"] == {}
    (reference,) = channel["metadata"]["ownerReferences"]
    assert reference["uid"] == OWNER.uid and reference["controller"] is True


def test_training_pod_is_told_its_progress_config_map() -> None:
    job = training_job(spec(), OWNER, 2, "hash", SETTINGS)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FTO_PROGRESS_CONFIGMAP"] == "support-bot-progress"


@pytest.mark.parametrize("name", ["x", "a" * 253, "9.lives.of.a.cat", "Name-With-Dots.and-digits-0123456789" * 5])
def test_child_names_and_labels_are_valid_for_any_legal_name(name: str) -> None:
    owner = Owner("ns", name.lower()[:253], "u" * 36)
    s = spec(distributed={"workers": 2})
    job = training_job(s, owner, 123, "h", SETTINGS)
    hostname = job["metadata"]["name"] + "-255"
    assert DNS1035.match(job["metadata"]["name"]) and len(hostname) <= 63
    assert DNS1035.match(workers_service(s, owner, 123)["metadata"]["name"])
    for manifest in [
        job,
        *serving_bundle(
            spec(serving={"enabled": True}),
            owner,
            Published(1, "causal-lm", "s3://m/", "s3://o/", True),
            SETTINGS,
        ),
    ]:
        assert len(manifest["metadata"]["name"]) <= 63
        for value in manifest["metadata"]["labels"].values():
            assert len(value) <= 63


def test_serving_bundle_rolls_on_model_change_and_adds_pdb_for_replicas() -> None:
    s = spec(serving={"enabled": True, "replicas": 2})
    one = serving_bundle(s, OWNER, Published(1, "causal-lm", "s3://m/", "s3://o/run-1/model/", True), SETTINGS)
    two = serving_bundle(s, OWNER, Published(2, "causal-lm", "s3://m/", "s3://o/run-2/model/", True), SETTINGS)
    kinds = [m["kind"] for m in one]
    assert kinds == ["ConfigMap", "Service", "NetworkPolicy", "PodDisruptionBudget", "Deployment"]
    d1, d2 = one[-1], two[-1]
    assert d1["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    t1, t2 = d1["spec"]["template"]["metadata"], d2["spec"]["template"]["metadata"]
    assert t1["annotations"]["finetune.dev/serve-config-hash"] != t2["annotations"]["finetune.dev/serve-config-hash"]
    assert json.loads(two[0]["data"]["serve.json"])["modelUri"] == "s3://o/run-2/model/"
    assert d1["spec"]["selector"] == d2["spec"]["selector"]
    single = serving_bundle(
        spec(serving={"enabled": True}),
        OWNER,
        Published(1, "causal-lm", "s3://m/", "s3://o/", True),
        SETTINGS,
    )
    assert "PodDisruptionBudget" not in [m["kind"] for m in single]


def test_vllm_fetches_base_and_adapter_and_requests_a_gpu() -> None:
    s = spec(serving={"enabled": True, "engine": "vllm", "apiKeySecret": "api"})
    deployment = serving_bundle(
        s,
        OWNER,
        Published(1, "causal-lm", "s3://m/base/", "s3://o/run-1/model/", True, lora_rank=24),
        SETTINGS,
    )[-1]
    pod = deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["image"] == SETTINGS.trainer_image  # our own fetch, not another tool's image
    assert fetch["command"] == [
        *("python", "-m", "finetune_trainer", "fetch"),
        *("--uri", "s3://m/base/", "--dest", "/models/base"),
        *("--uri", "s3://o/run-1/model/", "--dest", "/models/adapter"),
    ]
    server = pod["containers"][0]
    args = server["args"]
    assert server["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert args[args.index("--lora-modules") + 1] == f"{OWNER.name}=/models/adapter"
    assert args[args.index("--tokenizer") + 1] == "/models/adapter"  # the tokenizer and template it trained with
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "32"
    assert server["image"] == SETTINGS.vllm_image
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "apiKey"}}} in server["env"]
    # vLLM listens on loopback: its own probes run inside its container, the pod's readiness is the gateway's
    assert all("127.0.0.1:8080/health" in server[p]["exec"]["command"][-1] for p in ("startupProbe", "livenessProbe"))
    assert "readinessProbe" not in server and "ports" not in server


def test_vllm_without_a_gpu_when_the_limits_say_zero() -> None:
    limits = {"nvidia.com/gpu": 0, "memory": "8Gi"}
    s = spec(serving={"enabled": True, "engine": "vllm", "resources": {"limits": limits}})
    published = Published(1, "causal-lm", "s3://m/base/", "s3://o/run-1/model/", True)
    server = serving_bundle(s, OWNER, published, SETTINGS)[-1]["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"] == {"limits": {"nvidia.com/gpu": "0", "memory": "8Gi"}}


def test_vllm_cpu_device_renders_the_cpu_builds_flags_memory_and_no_gpu() -> None:
    settings = dataclasses.replace(SETTINGS, vllm_device="cpu", vllm_image="finetune.local/vllm:1")
    s = spec(serving={"enabled": True, "engine": "vllm"})
    published = Published(1, "causal-lm", "s3://m/base/", "s3://o/run-1/model/", True)
    pod = serving_bundle(s, OWNER, published, settings)[-1]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    args = server["args"]
    assert server["image"] == "finetune.local/vllm:1"
    assert args[args.index("--dtype") + 1] == "float32"  # bfloat16 is slow on CPUs without AVX512
    assert args[args.index("--max-model-len") + 1] == "2048"
    assert args.count("--dtype") == 1 and "--enable-lora" in args  # the adapter as on a GPU
    assert {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"} in server["env"]
    # unpinned threads: vLLM's default binding puts every server on a node on the same core
    assert {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"} in server["env"]
    assert server["resources"] == {"requests": {"memory": "7Gi"}, "limits": {"memory": "7Gi"}}
    assert "nvidia.com/gpu" not in json.dumps(pod)
    # the user's memory wins (both request and limit are theirs), and still no GPU
    s = spec(serving={"enabled": True, "engine": "vllm", "resources": {"limits": {"memory": "12Gi"}}})
    server = serving_bundle(s, OWNER, published, settings)[-1]["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"] == {"limits": {"memory": "12Gi"}}
    # the GPU device renders none of it
    gpu = serving_bundle(s, OWNER, published, SETTINGS)[-1]["spec"]["template"]["spec"]["containers"][0]
    assert "--dtype" not in gpu["args"] and "--max-model-len" not in gpu["args"]
    assert not [e for e in gpu["env"] if e["name"].startswith("VLLM_CPU")]


def test_vllm_server_keeps_answering_while_its_endpoint_is_withdrawn() -> None:
    """A roll drops no request: the old pod serves for 10 s after it is marked for deletion (preStop), inside
    its grace period; the new pod is ready (vLLM's /health) before the old one goes (maxUnavailable 0)."""
    s = spec(serving={"enabled": True, "engine": "vllm"})
    published = Published(1, "causal-lm", "s3://m/base/", "s3://o/run-1/model/", True)
    deployment = serving_bundle(s, OWNER, published, SETTINGS)[-1]
    pod = deployment["spec"]["template"]["spec"]
    server, gateway = pod["containers"]
    assert server["lifecycle"] == gateway["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
    assert pod["terminationGracePeriodSeconds"] > 10
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the gateway asks vLLM's /health
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_vllm_serves_full_weights_as_one_model() -> None:
    s = spec(serving={"enabled": True, "engine": "vllm"})
    published = Published(1, "causal-lm", "s3://m/base/", "s3://o/run-1/model/", adapter=False)
    pod = serving_bundle(s, OWNER, published, SETTINGS)[-1]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][4:] == ["--uri", "s3://o/run-1/model/", "--dest", "/models/model"]
    args = pod["containers"][0]["args"]
    assert args[:4] == ["--model", "/models/model", "--served-model-name", OWNER.name]
    assert "--enable-lora" not in args and "--tokenizer" not in args


def test_engine_table_is_what_the_crd_and_the_spec_allow() -> None:
    from pathlib import Path
    from typing import get_args

    import yaml
    from finetune_operator.api.finetunejob import ServingSpec
    from finetune_operator.builders.engines import ENGINES

    crd = yaml.safe_load((Path(__file__).parents[3] / "crds" / "finetunejob.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    engines = spec_schema["properties"]["serving"]["properties"]["engine"]["enum"]
    assert set(engines) == set(ENGINES) == set(get_args(ServingSpec.model_fields["engine"].annotation))
    rules = " ".join(rule["rule"] for rule in spec_schema["x-kubernetes-validations"])
    for engine in ENGINES.values():  # an engine that serves only causal-lm has the CRD rule saying so
        assert (f"self.serving.engine != '{engine.name}'" in rules) == ("sequence-classification" not in engine.tasks)


def test_max_duration_is_the_training_jobs_deadline_and_a_placement_change() -> None:
    assert "activeDeadlineSeconds" not in training_job(spec(), OWNER, 1, "h", SETTINGS)["spec"]
    limited = spec(resources={"maxDuration": "1h30m"})
    assert training_job(limited, OWNER, 1, "h", SETTINGS)["spec"]["activeDeadlineSeconds"] == 5400
    assert placement_spec_hash(limited) != placement_spec_hash(spec())  # raising it replaces the Job (resumes)
    assert training_spec_hash(limited) == training_spec_hash(spec())  # the same run


@pytest.mark.parametrize("bad", ["0s", "", "90", "1.5h", "30m1h", "-1h"])
def test_a_max_duration_that_is_no_positive_duration_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"maxDuration|max_duration"):
        spec(resources={"maxDuration": bad})


def _vllm_pods() -> dict[str, dict[str, Any]]:
    """A FineTuneJob's own vLLM pod (with a key) and a shared vLLM ModelServer's pod."""
    from finetune_operator.api.modelserver import ModelServerSpec
    from finetune_operator.builders.modelserver import ServerOwner, server_bundle

    s = spec(serving={"enabled": True, "engine": "vllm", "apiKeySecret": "api"})
    published = Published(1, "causal-lm", "s3://m/base/", "s3://o/run-1/model/", True)
    own = serving_bundle(s, OWNER, published, SETTINGS)[-1]["spec"]["template"]["spec"]
    server_spec = ModelServerSpec.model_validate(
        {"baseModelUri": "s3://m/base/", "engine": "vllm", "maxAdapters": 4, "apiKeySecret": "api"}
    )
    owner = ServerOwner(namespace="team", name="shared", uid="u-1")
    shared = server_bundle(server_spec, owner, SETTINGS)[-1]["spec"]["template"]["spec"]
    return {"own": own, "shared": shared}


@pytest.mark.parametrize("kind", ["own", "shared"])
def test_vllm_binds_loopback_and_the_gateway_holds_the_service_port(kind: str) -> None:
    """Nothing outside the pod reaches vLLM (its runtime-LoRA routes with it): the gateway is the one container
    with a port, hardened like the rest, with the probes the kubelet can reach, and the server's key."""
    pod = _vllm_pods()[kind]
    by_name = {c["name"]: c for c in pod["containers"]}
    vllm, gateway = by_name["server"], by_name["gateway"]
    args = vllm["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "8080"
    assert [c["name"] for c in pod["containers"] if c.get("ports")] == ["gateway"]
    assert gateway["ports"] == [{"name": "http", "containerPort": 8000}]
    command = gateway["command"]
    assert command[:4] == ["python", "-m", "finetune_trainer", "gateway"]
    assert command[command.index("--upstream") + 1] == "http://127.0.0.1:8080"
    assert gateway["image"] == SETTINGS.server_image
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    key = {"secretKeyRef": {"name": "api", "key": "apiKey"}}
    assert {"name": "FTO_API_KEY", "valueFrom": key} in gateway["env"]
    assert {"name": "VLLM_API_KEY", "valueFrom": key} in vllm["env"]
    assert not [m for m in gateway["volumeMounts"] if not m.get("readOnly")]  # it writes nothing
    if kind == "shared":  # the tenant keys: the sidecar's copy of adapters.json; the sidecar talks to vLLM itself
        assert command[command.index("--adapters-file") + 1] == "/adapters/.adapters.json"
        assert command[command.index("--base-model") + 1] == "shared"
        sidecar = by_name["adapters"]["command"]
        assert sidecar[sidecar.index("--engine-url") + 1] == "http://127.0.0.1:8080"
    else:
        assert "--adapters-file" not in command


def test_our_shared_server_sidecar_talks_to_the_server_port() -> None:
    from finetune_operator.api.modelserver import ModelServerSpec
    from finetune_operator.builders.modelserver import ServerOwner, server_bundle

    server_spec = ModelServerSpec.model_validate({"baseModelUri": "s3://m/base/", "maxAdapters": 2})
    owner = ServerOwner(namespace="team", name="shared", uid="u-1")
    pod = server_bundle(server_spec, owner, SETTINGS)[-1]["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    assert set(by_name) == {"server", "adapters"}
    sidecar = by_name["adapters"]["command"]
    assert sidecar[sidecar.index("--engine-url") + 1] == "http://127.0.0.1:8000"


def _trainer_resources(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container["resources"])


def test_ephemeral_storage_comes_from_the_manifest_else_the_disk_plan_else_none() -> None:
    """Request = limit, so the scheduler picks a node with room and the kubelet stops this pod, not its
    neighbours, when it writes more than planned."""
    plain = _trainer_resources(training_job(spec(), OWNER, 1, "h", SETTINGS))
    assert "ephemeral-storage" not in plain["requests"] and "ephemeral-storage" not in plain["limits"]
    planned = _trainer_resources(training_job(spec(), OWNER, 1, "h", SETTINGS, disk_bytes=3 * 2**30 + 1))
    assert planned["requests"]["ephemeral-storage"] == planned["limits"]["ephemeral-storage"] == "3073Mi"  # rounded up
    given = spec(resources={"ephemeralStorage": "200Gi"})
    chosen = _trainer_resources(training_job(given, OWNER, 1, "h", SETTINGS, disk_bytes=3 * 2**30))
    assert chosen["requests"]["ephemeral-storage"] == chosen["limits"]["ephemeral-storage"] == "200Gi"
    assert placement_spec_hash(given) != placement_spec_hash(spec())  # a new Job on the same run (resumes)
    assert training_spec_hash(given) == training_spec_hash(spec())
    with pytest.raises(ValidationError, match=r"ephemeral"):
        spec(resources={"ephemeralStorage": {"size": 1}})
