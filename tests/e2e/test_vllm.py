"""`serving.engine: vllm` for real on the local cluster's real node: vLLM's CPU build serves what our trainer made.

The chart runs the operator with the vLLM CPU image of `make images` (`serving.vllmImage`, `serving.vllmDevice:
cpu`). One FineTuneJob (module-scoped: the slow part is trained and served once) fine-tunes SmolLM2-135M-Instruct
with LoRA in a pod, passes its gate, is published and served by a real vLLM server (no stand-in); the official
`openai` client lists the models, chats with the adapter's name and streams, with the API key, through the gateway
that holds the Service port (vLLM itself listens on the pod's loopback; its load/unload routes answer 404). Then a
spec change retrains (run 2) and the Deployment rolls to it while two clients keep sending requests: none may fail.

How the clients reach the pods: this cluster has no kube-proxy, so `tests/support/endpoint_load.py` does what it
does, from the Service's EndpointSlices; a request sent to a pod just withdrawn from the Service, or cut off by
its shutdown, fails the test.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, ROOT, VERSION, install_chart, seed_demo
from tests.support.endpoint_load import EndpointLoad, ready_endpoints

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

NAME = "vllm-chat"
API_KEY = "e2e-" + uuid.uuid4().hex
DEMO = ROOT / "hack" / "demo"
if str(DEMO) not in sys.path:
    sys.path.insert(0, str(DEMO))


@dataclass
class Served:
    cluster: Cluster
    namespace: str
    status: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    job = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
    return dict(job.get("status") or {})


def _serving(cluster: Cluster, namespace: str, run_number: int, deadline_s: float) -> dict[str, Any]:
    """Poll until the job serves `run_number` (Ready), or fail with what it went through."""
    phases: list[str] = []
    status: dict[str, Any] = {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        status = _status(cluster, namespace)
        phase = status.get("phase")
        if phase and (not phases or phases[-1] != phase):
            phases.append(phase)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        if phase == "Failed":
            break
        if phase == "Serving" and ready and (status.get("endpoint") or {}).get("run") == run_number:
            return status
        time.sleep(2)
    logs = _server_logs(cluster, namespace)
    raise AssertionError(f"run {run_number} not served: phases {phases}, status {status}\n{logs}")


def _server_logs(cluster: Cluster, namespace: str) -> str:
    out = []
    for pod in cluster.core.list_namespaced_pod(namespace, label_selector="finetune.dev/component=serving").items:
        for container in ("fetch-model", "server", "gateway"):
            try:
                text = cluster.core.read_namespaced_pod_log(pod.metadata.name, namespace, container=container)
            except Exception as error:  # a container that has not started has no log yet
                text = f"(no log: {error})"
            out.append(f"--- {pod.metadata.name}/{container}\n{text[-3000:]}")
    return "\n".join(out)


def _manifest(namespace: str, max_steps: int) -> dict[str, Any]:
    """The quickstart (SmolLM2, LoRA, the demo's local overrides), short, served by vLLM with an API key."""
    import yaml
    from localize import localize

    manifest = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    manifest = localize(manifest, os.environ["FTO_POD_S3_ENDPOINT"])
    manifest["metadata"]["name"] = NAME
    spec = manifest["spec"]
    spec["output"]["uri"] = f"s3://artifacts/e2e/{namespace}/"
    # a small CPU request: the node's two cores are requested by other tests' pods too (no limit: it may use both)
    spec["resources"]["cpu"] = "250m"
    # short: this test is about serving; the quickstart's test asserts what training learns
    spec["hyperparameters"]["maxSteps"] = max_steps
    spec["evaluation"] = {"compareBaseModel": False, "gate": [{"metric": "test_loss", "max": 5.0}]}
    spec["serving"] = {"enabled": True, "replicas": 1, "engine": "vllm", "maxConcurrency": 4, "apiKeySecret": "api"}
    return dict(manifest)


@pytest.fixture(scope="module")
def served(cluster: Cluster, images: dict[str, str], vllm_image: str) -> Iterator[Served]:
    """One SmolLM2 LoRA FineTuneJob, trained on the real node and served by vLLM's CPU build (run 1)."""
    from kubernetes import client

    namespace = f"t-vllm-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"finetune.dev/test": "true"}))
    )
    try:
        start = time.monotonic()
        seed_demo(cluster, namespace)
        cluster.core.create_namespaced_secret(
            namespace, {"metadata": {"name": "api"}, "stringData": {"apiKey": API_KEY}}
        )
        sets = (f"serving.vllmImage={vllm_image}", "serving.vllmDevice=cpu", "validation.cpu=250m")
        with install_chart(cluster, namespace, images, *sets):
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _manifest(namespace, 8))
            status = _serving(cluster, namespace, 1, 1500)
            yield Served(cluster, namespace, status, {"run 1 applied to served (s)": time.monotonic() - start})
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
    finally:
        cluster.core.delete_namespace(namespace, propagation_policy="Background")


def _client(address: str, api_key: str = API_KEY) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"http://{address}:8000/v1", api_key=api_key, max_retries=0, timeout=60)


def test_vllm_serves_the_adapter_to_the_openai_client(served: Served) -> None:
    import openai

    status = served.status
    assert status["gate"]["passed"] is True and status["endpoint"]["run"] == 1
    assert status["published"]["adapter"] is True
    deployment = served.cluster.apps.read_namespaced_deployment(NAME, served.namespace)
    pod = deployment.spec.template.spec
    server = pod.containers[0]
    assert server.image.startswith("finetune.local/vllm:")  # the CPU build of make images, not a stand-in
    assert "--dtype" in server.args and server.args[server.args.index("--dtype") + 1] == "float32"
    assert not (server.resources.limits or {}).get("nvidia.com/gpu")
    assert pod.security_context.run_as_non_root is True

    service = status["endpoint"]["url"].split("//", 1)[1].split(".", 1)[0]
    (address,) = ready_endpoints(served.cluster.api_client, served.namespace, service)
    model = status["endpoint"]["model"]
    vllm = _client(address)
    listed = {m.id: m for m in vllm.models.list().data}
    assert model in listed and f"{model}-base" in listed, sorted(listed)
    assert listed[model].owned_by == "vllm"  # vLLM answers, not our engine
    reply = vllm.chat.completions.create(
        model=model,
        max_tokens=24,
        temperature=0,
        messages=[{"role": "user", "content": "How do I reset my password?"}],
    )
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.model == model
    chunks = vllm.chat.completions.create(
        model=model,
        max_tokens=16,
        temperature=0,
        stream=True,
        messages=[{"role": "user", "content": "How do I change my email address?"}],
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len(pieces) > 2 and "".join(pieces).strip(), pieces
    # the API key is enforced (as with our engine): a wrong key gets 401
    with pytest.raises(openai.AuthenticationError):
        _client(address, api_key="wrong").models.list()
    # vLLM listens on the pod's loopback behind the gateway, which never forwards the runtime-LoRA routes
    import httpx

    assert [c.name for c in pod.containers] == ["server", "gateway"]
    assert server.args[server.args.index("--host") + 1] == "127.0.0.1"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        body = {"lora_name": "intruder", "lora_path": "/models/adapter"}
        assert httpx.post(f"http://{address}:8000{path}", json=body, headers=auth, timeout=30).status_code == 404


def _ask(vllm: Any) -> None:
    reply = vllm.chat.completions.create(
        model=NAME,
        max_tokens=8,
        temperature=0,
        messages=[{"role": "user", "content": "How do I reset my password?"}],
    )
    assert reply.choices[0].message.content


def test_a_retrained_run_rolls_in_while_clients_get_every_answer(served: Served) -> None:
    cluster, namespace = served.cluster, served.namespace
    service = served.status["endpoint"]["url"].split("//", 1)[1].split(".", 1)[0]
    # two clients with a short pause: the node's two cores also train run 2
    load = EndpointLoad(cluster.api_client, namespace, service, _client, _ask, concurrency=2, pause=0.2)
    start = time.monotonic()
    with load:
        # a spec change retrains: run 2
        patch = {"spec": {"hyperparameters": {"maxSteps": 6}}}
        cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, patch)
        status = _serving(cluster, namespace, 2, 1500)
        # the roll is over when only run 2's pod is left and ready
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pods = cluster.core.list_namespaced_pod(namespace, label_selector="finetune.dev/component=serving").items
            runs = {p.metadata.labels.get("finetune.dev/run") for p in pods}
            if runs == {"2"} and len(ready_endpoints(cluster.api_client, namespace, service)) == 1:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the roll did not finish: {[(p.metadata.name, p.status.phase) for p in pods]}")
        (alone,) = ready_endpoints(cluster.api_client, namespace, service)
        load.wait_answered(4, by=alone, timeout=300)  # a few more requests to run 2's pod alone
    report = load.report()
    served.timings["run 2 patched to rolled (s)"] = time.monotonic() - start
    print(f"\nvLLM e2e: {served.timings}, {report.summary()}")
    assert status["endpoint"]["run"] == 2 and status["published"]["run"] == 2
    assert not report.failures, report.failures[:20]
    # both pods answered: the requests really crossed the roll
    assert len(report.answered) == 2 and all(n > 0 for n in report.answered.values()), report.answered
