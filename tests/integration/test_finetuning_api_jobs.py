"""OpenAI's fine-tuning jobs, models and inference (finetune_trainer.finetuning_api) against a real kube-apiserver
with the FineTuneJob CRD and a real S3 server, called with the official `openai` client.

Most tests run without the operator: a test creates jobs through the API, checks the FineTuneJob objects the API
server stored (and its admission rules accepted), then writes a status as the operator would (the status
subresource, as the cluster admin) and checks how the API shows it. The service runs in-process as a
ServiceAccount bound to the chart's ClusterRole for it (TokenReview, SubjectAccessReview, impersonation only);
every refusal is the API server's RBAC or admission answering the impersonated caller. Inference goes to a real
model server (the project's engine on a tiny model, with an API key) that the job's status names as its endpoint:
the transport maps that Service name to the server's local port, as the cluster's DNS would. One test runs the
operator too (validation off, kwok pods): an API-made job trains, is served, is unpublished; another is cancelled.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.integration.conftest import Jobs, Operator, success_message
from tests.support import finetuning_api as fapi
from tests.support.kwok import KWOK_NODE_SELECTOR, KWOK_TOLERATION
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

SECRET = "finetune-storage"
KEY = "sk-endpoint-key-0123456789"
CHAT = b"".join(
    b'{"messages": [{"role": "user", "content": "Question %d?"}, {"role": "assistant", "content": "Answer %d"}]}\n'
    % (i, i)
    for i in range(12)
)
TENANT_RULES = [
    {"apiGroups": ["finetune.dev"], "resources": ["finetunejobs"], "verbs": ["get", "list", "create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]
CATALOG = {
    "models": [
        {"name": "tiny", "baseModel": "s3://models/tiny-lm/", "resources": {"gpus": 0, "memory": "4Gi"}},
        {  # pods that land on kwok's fake GPU nodes, for the test with the operator running
            "name": "tiny-kwok",
            "baseModel": "s3://models/tiny-lm/",
            "resources": {
                "gpus": 1,
                "memory": "1Gi",
                "cpu": "1",
                "tolerations": [KWOK_TOLERATION],
                "nodeSelector": KWOK_NODE_SELECTOR,
            },
        },
    ]
}
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"


@dataclass
class Api:
    url: str
    cluster: Any
    bucket: Any
    tokens: dict[str, str]
    namespaces: dict[str, str]

    def client(self, who: str, project: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.tokens[who], project=project, max_retries=0)

    def objects(self, who: str) -> list[dict[str, Any]]:
        listed = self.cluster.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespaces[who], PLURAL)
        return list(listed["items"])

    def get(self, who: str, name: str) -> dict[str, Any]:
        return dict(
            self.cluster.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespaces[who], PLURAL, name)
        )

    def write_status(self, who: str, name: str, status: dict[str, Any]) -> None:
        """What the operator would write (the status subresource, as the admin)."""
        self.cluster.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespaces[who], PLURAL, name, {"status": status}
        )


class ServiceDns(httpx.AsyncHTTPTransport):
    """Sends requests for `<service>.<namespace>.svc` to the local servers registered for them."""

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        port = self.hosts.get(request.url.host)
        if port is not None:
            request.url = request.url.copy_with(host="127.0.0.1", port=port)
        return await super().handle_async_request(request)


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    """The project's own engine on a tiny LoRA-tuned LM, requiring the endpoint key KEY."""
    import tempfile

    from finetune_trainer.serving.server.app import create_app

    from tests.serve import tiny_models
    from tests.serve.conftest import settings_for
    from tests.serve.server import RunningServer

    with tempfile.TemporaryDirectory() as folder:
        base = tiny_models.build_causal_lm(Path(folder) / "lm")
        adapter = tiny_models.build_lora_adapter(base, Path(folder) / "adapter")
        app = create_app(settings_for(str(adapter), str(base), api_key=KEY))
        with RunningServer(app) as server:
            wait_for("the model server", lambda: httpx.get(server.url + "/readyz").status_code == 200 or None, 120)
            yield server.url


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> ServiceDns:
    from finetune_trainer.finetuning_api import routes_models

    transport = ServiceDns()
    monkeypatch.setattr(routes_models, "UPSTREAM_TRANSPORT", transport)
    return transport


@pytest.fixture
def api(
    cluster: Any, crd: str, namespace: str, other_namespace: str, s3_bucket: Any, tmp_path: Path, dns: ServiceDns
) -> Iterator[Api]:
    from finetune_trainer.finetuning_api.config import ApiConfig

    endpoint = s3_bucket.endpoint
    for ns in (namespace, other_namespace):
        keys = {"AWS_ACCESS_KEY_ID": endpoint.access_key, "AWS_SECRET_ACCESS_KEY": endpoint.secret_key}
        cluster.core.create_namespaced_secret(ns, {"metadata": {"name": SECRET}, "stringData": keys})
        fapi.service_account(cluster, ns, "tenant")
        fapi.bind(cluster, ns, "tenant", TENANT_RULES)
    fapi.service_account(cluster, namespace, "nobody")
    for ns in (namespace, other_namespace):
        user = f"system:serviceaccount:{ns}:tenant"
        wait_for("a tenant's RBAC", lambda: fapi.allowed(cluster, user, ns, "patch", PLURAL, GROUP) or None)  # noqa: B023
    catalog = tmp_path / "models.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    with fapi.service_identity(cluster, namespace, tmp_path) as kubeconfig:
        config = ApiConfig(
            bucket=s3_bucket.name,
            s3_endpoint=endpoint.url,
            s3_region=endpoint.region,
            kubeconfig=str(kubeconfig),
            catalog_path=str(catalog),
        )
        port, stop = fapi.serve(config)
        try:
            yield Api(
                url=f"http://127.0.0.1:{port}",
                cluster=cluster,
                bucket=s3_bucket,
                tokens={
                    "a": fapi.token(cluster, namespace, "tenant"),
                    "b": fapi.token(cluster, other_namespace, "tenant"),
                    "nobody": fapi.token(cluster, namespace, "nobody"),
                },
                namespaces={"a": namespace, "b": other_namespace},
            )
        finally:
            stop()


def test_create_maps_to_a_finetunejob_and_back(api: Api) -> None:
    client = api.client("a")
    namespace = api.namespaces["a"]
    train = client.files.create(file=("train.jsonl", CHAT), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", CHAT[:300].rsplit(b"\n", 1)[0] + b"\n"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train.id,
        validation_file=valid.id,
        suffix="bot",
        seed=7,
        metadata={"team": "a"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    assert isinstance(job, openai.types.fine_tuning.FineTuningJob)
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.organization_id == namespace
    assert (job.model, job.training_file, job.validation_file, job.seed) == ("tiny", train.id, valid.id, 7)
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.metadata == {"team": "a"} and job.fine_tuned_model is None
    assert abs(job.created_at - time.time()) < 60

    obj = api.get("a", job.id)  # what the API server stored, as created by the impersonated tenant
    spec = obj["spec"]
    bucket = api.bucket.name
    assert spec["baseModel"]["uri"] == "s3://models/tiny-lm/"
    assert spec["dataset"]["train"]["uri"] == f"s3://{bucket}/{namespace}/files/{train.id}.jsonl"
    assert spec["dataset"]["validation"]["uri"] == f"s3://{bucket}/{namespace}/files/{valid.id}.jsonl"
    assert spec["output"]["uri"] == f"s3://{bucket}/{namespace}/jobs/{job.id}/"
    assert spec["storage"]["credentialsSecret"] == SECRET
    assert spec["hyperparameters"]["epochs"] == 2 and spec["hyperparameters"]["seed"] == 7
    assert spec["serving"]["enabled"] is True and spec["resources"]["gpus"] == 0
    assert client.fine_tuning.jobs.retrieve(job.id) == job


def test_refusals_name_their_param_and_create_nothing(api: Api) -> None:
    client = api.client("a")
    train = client.files.create(file=("train.jsonl", CHAT), purpose="fine-tune")
    bad = client.files.create(file=("bad.jsonl", b'{"messages": [\nnot json\n'), purpose="fine-tune")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "gpt-4o-mini", "training_file": train.id}, "model"),
        ({"model": "tiny", "training_file": train.id, "hyperparameters": {"warmup_steps": 3}},
         "hyperparameters.warmup_steps"),
        ({"model": "tiny", "training_file": train.id, "method": {"type": "reinforcement"}}, "method.type"),
        ({"model": "tiny", "training_file": train.id,
          "integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        ({"model": "tiny", "training_file": "file-000000000000000000000000"}, "training_file"),
        ({"model": "tiny", "training_file": train.id, "validation_file": bad.id}, "validation_file"),
    ]  # fmt: skip
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(**body)
        assert caught.value.param == param, caught.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.post("/fine_tuning/jobs", cast_to=object, body={"model": "tiny", "training_file": train.id, "x": 1})
    assert unknown.value.param == "x"
    with pytest.raises(openai.APIStatusError) as large:  # refused before the body is held whole
        client.post("/fine_tuning/jobs", cast_to=object, body={"model": "tiny", "suffix": "x" * (2 << 20)})
    assert large.value.status_code == 413
    not_json = httpx.post(api.url + "/v1/fine_tuning/jobs", content=b"{model", headers={
        "Authorization": f"Bearer {api.tokens['a']}", "Content-Type": "application/json"})  # fmt: skip
    assert not_json.status_code == 400 and not_json.json()["error"]["param"] == "body"
    with pytest.raises(openai.PermissionDeniedError):
        api.client("nobody").fine_tuning.jobs.create(model="tiny", training_file=train.id)
    assert api.objects("a") == []


def _job(api: Api, who: str = "a", model: str = "tiny", **extra: Any) -> Any:
    client = api.client(who)
    train = client.files.create(file=("train.jsonl", CHAT), purpose="fine-tune")
    return client.fine_tuning.jobs.create(model=model, training_file=train.id, **extra)


def test_list_pages_and_filters_by_metadata(api: Api) -> None:
    client = api.client("a")
    first = _job(api, metadata={"team": "x"})
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    second = _job(api, metadata={"team": "y"})
    listed = client.fine_tuning.jobs.list()
    assert [j.id for j in listed.data] == [second.id, first.id] and not listed.has_more
    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id] and page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=second.id).data] == [first.id]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [second.id, first.id]  # auto-pagination
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "x"}).data] == [first.id]
    kubectl_made = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "by-hand"},
                    "spec": {"baseModel": {"uri": "s3://models/m/"}, "dataset": {"train": {"uri": "s3://data/t.jsonl"}},
                             "output": {"uri": "s3://out/p/"}}}  # fmt: skip
    api.cluster.custom.create_namespaced_custom_object(GROUP, VERSION, api.namespaces["a"], PLURAL, kubectl_made)
    assert len(client.fine_tuning.jobs.list().data) == 2  # only jobs made through the API are OpenAI jobs
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("by-hand")


def test_status_events_and_checkpoints_follow_the_object(api: Api) -> None:
    client = api.client("a")
    job = _job(api, suffix="bot")
    later, latest = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + s)) for s in (60, 120))
    api.write_status(
        "a",
        job.id,
        {
            "phase": "Training",
            "run": 1,
            "validation": {"run": 1, "passed": True, "message": "train: 10 records, 300 tokens",
                           "tokens": {"train": 300}},
            "progress": {"run": 1, "stage": "training", "step": 6, "totalSteps": 12, "loss": 1.25,
                         "lastCheckpointStep": 6, "estimatedFinishTime": "2030-01-01T00:00:00Z",
                         "updatedAt": latest},
        },
    )  # fmt: skip
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish == 1893456000
    obj = api.get("a", job.id)
    api.cluster.core.create_namespaced_event(
        api.namespaces["a"],
        {
            "metadata": {"generateName": job.id + "."},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "name": job.id,
                               "namespace": api.namespaces["a"], "uid": obj["metadata"]["uid"]},
            "reason": "Training", "message": "run 1: training", "type": "Normal",
            "firstTimestamp": later, "lastTimestamp": later, "count": 1,
            "source": {"component": "finetune-operator"},
        },
    )  # fmt: skip
    events = client.fine_tuning.jobs.list_events(job.id, limit=50)
    messages = [e.message for e in events.data]
    assert messages[:2] == ["Step 6/12: training loss=1.2500", "Training: run 1: training"]  # newest first
    assert "train: 10 records, 300 tokens" in messages
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert all(isinstance(e, openai.types.fine_tuning.FineTuningJobEvent) for e in events.data)
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=1)] == [e.id for e in events.data]
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.step_number == 6 and checkpoint.metrics.train_loss == 1.25
    assert checkpoint.fine_tuned_model_checkpoint == f"ft:tiny:{api.namespaces['a']}:bot:{job.id}:ckpt-step-6"

    api.write_status("a", job.id, {"phase": "Failed", "error": {"code": "DatasetInvalid", "message": "line 3"}})
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.code, failed.error.param) == ("DatasetInvalid", "training_file")


def test_a_succeeded_jobs_result_file_is_its_runs_step_metrics(api: Api) -> None:
    client = api.client("a")
    namespace = api.namespaces["a"]
    job = _job(api)
    history = [
        {"loss": 2.0, "learning_rate": 0.01, "step": 1},
        {"loss": 1.5, "step": 2},
        {"eval_loss": 1.75, "step": 2},
        {"train_runtime": 1.0, "train_loss": 1.75, "step": 2},
    ]
    metrics = {"run": 1, "metrics": {}, "history": history}
    key = f"{namespace}/jobs/{job.id}/run-1/metrics.json"  # where the trainer writes it under the job's output
    api.bucket.client.put_object(Bucket=api.bucket.name, Key=key, Body=json.dumps(metrics).encode())
    assert client.fine_tuning.jobs.retrieve(job.id).result_files == []  # not succeeded yet

    api.write_status("a", job.id, {"phase": "Succeeded", "run": 1})
    done = client.fine_tuning.jobs.retrieve(job.id)
    (result_id,) = done.result_files
    assert result_id == f"file-results-{job.id}-run-1"
    described = client.files.retrieve(result_id)
    assert isinstance(described, openai.types.FileObject)
    assert (described.purpose, described.filename, described.status) == ("fine-tune-results", "step_metrics.csv",
                                                                          "processed")  # fmt: skip
    content = client.files.content(result_id).content
    assert content == (b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.0,,,\n2,1.5,,1.75,\n")
    assert described.bytes == len(content)
    # uploaded files are listed as before; a result file is not an upload
    assert result_id not in {f.id for f in client.files.list().data}

    # another tenant: as for any file of another namespace, 404
    with pytest.raises(openai.NotFoundError):
        api.client("b").files.retrieve(result_id)
    with pytest.raises(openai.NotFoundError):
        api.client("b").files.content(result_id)
    # a result file is not deleted on its own (the run's metrics are the gate's and the report's)
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.delete(result_id)
    assert refused.value.body["param"] == "file_id"  # type: ignore[index]
    assert api.bucket.client.head_object(Bucket=api.bucket.name, Key=key)

    # a second run replaces it: run 2's file (404 until its metrics.json is written), and run 1's is gone
    api.write_status("a", job.id, {"phase": "Serving", "run": 2})
    (second,) = client.fine_tuning.jobs.retrieve(job.id).result_files
    assert second == f"file-results-{job.id}-run-2"
    for gone in (result_id, second):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(gone)
    # a caller without the fine-tuning Role: 403 before anything is read
    with pytest.raises(openai.PermissionDeniedError):
        api.client("nobody").files.retrieve(second)


def test_pause_resume_cancel(api: Api) -> None:
    client = api.client("a")
    job = _job(api)
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "validating_files" and api.get("a", job.id)["spec"]["suspend"] is True
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    client.fine_tuning.jobs.resume(job.id)
    assert api.get("a", job.id)["spec"]["suspend"] is False
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    spec = api.get("a", job.id)["spec"]
    assert spec["suspend"] is True and spec["serving"]["enabled"] is False
    for again in (client.fine_tuning.jobs.cancel, client.fine_tuning.jobs.resume, client.fine_tuning.jobs.pause):
        with pytest.raises(openai.BadRequestError):
            again(job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_another_namespace_sees_nothing(api: Api) -> None:
    job = _job(api)
    other = api.client("b")
    assert other.fine_tuning.jobs.list().data == []
    for call in (
        other.fine_tuning.jobs.retrieve,
        other.fine_tuning.jobs.cancel,
        other.fine_tuning.jobs.pause,
        other.fine_tuning.jobs.list_events,
        other.fine_tuning.jobs.checkpoints.list,
    ):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    with pytest.raises(openai.PermissionDeniedError):  # naming a's namespace as the project: b's RBAC decides
        api.client("b", project=api.namespaces["a"]).fine_tuning.jobs.retrieve(job.id)
    assert api.get("a", job.id)["spec"].get("suspend") is not True


def _serve(api: Api, dns: ServiceDns, job_id: str, server_url: str) -> str:
    """Write the status of a published job whose endpoint is `server_url`, with its generated key Secret."""
    namespace = api.namespaces["a"]
    api.cluster.core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": f"{job_id}-api-key"}, "data": {"apiKey": base64.b64encode(KEY.encode()).decode()}},
    )
    host = f"{job_id}-serving.{namespace}.svc"
    dns.hosts[host] = int(server_url.rsplit(":", 1)[1])
    api.write_status(
        "a",
        job_id,
        {
            "phase": "Serving",
            "run": 1,
            "validation": {"run": 1, "passed": True, "tokens": {"train": 300}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "",
                            "lastTransitionTime": "2026-12-06T21:00:00Z"}],
            "endpoint": {"url": f"http://{host}:8000/v1", "model": "support-bot", "run": 1},
            "serving": {"apiKeySecret": f"{job_id}-api-key"},
        },
    )  # fmt: skip
    return f"ft:tiny:{namespace}:bot:{job_id}"


def test_chat_with_the_fine_tuned_model_then_unpublish(api: Api, dns: ServiceDns, model_server: str) -> None:
    client = api.client("a")
    job = _job(api, suffix="bot")
    name = _serve(api, dns, job.id, model_server)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == name and done.trained_tokens == 900
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-kwok", name]
    assert client.models.retrieve(name).owned_by == api.namespaces["a"]

    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert reply.model == name and reply.choices[0].message.content is not None
    stream = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert chunks and all(chunk.model == name for chunk in chunks)
    text = client.completions.create(model=name, prompt="Hello", max_tokens=4)
    assert text.model == name and text.choices
    with pytest.raises(openai.BadRequestError) as refused:  # the engine's own refusal comes back as it is
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], store=True)
    assert refused.value.param == "store"

    other = api.client("b")
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(name)
    assert [m.id for m in other.models.list()] == ["tiny", "tiny-kwok"]
    with pytest.raises(openai.NotFoundError):
        other.models.delete(name)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])

    deleted = client.models.delete(name)
    assert deleted.deleted and deleted.id == name
    assert api.get("a", job.id)["spec"]["serving"]["enabled"] is False
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-kwok"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}])


def test_a_status_pointing_outside_the_namespace_is_not_called(api: Api, dns: ServiceDns, model_server: str) -> None:
    client = api.client("a")
    job = _job(api, suffix="bot")
    name = _serve(api, dns, job.id, model_server)
    api.write_status("a", job.id, {"endpoint": {"url": "http://metadata.google.internal/v1", "model": "x", "run": 1}})
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502


def test_the_operator_runs_an_api_job_to_serving_and_cancels_another(api: Api, operator: Operator, jobs: Jobs) -> None:
    """The operator (validation off, as the control-loop tests run it) takes a job the API made: its training
    pod on a kwok node, finished with metrics, then the model served (kwok's serving pods turn Ready)."""
    client = api.client("a")
    namespace = api.namespaces["a"]
    job = _job(api, model="tiny-kwok", suffix="bot")
    pod = jobs.running_pod(namespace, f"{job.id}-r1", timeout=90)
    assert wait_for("running", lambda: client.fine_tuning.jobs.retrieve(job.id).status == "running" or None, 60)
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message(1.2))
    jobs.wait_phase(namespace, job.id, "Serving", timeout=120)
    done = client.fine_tuning.jobs.retrieve(job.id)
    name = f"ft:tiny-kwok:{namespace}:bot:{job.id}"
    assert done.status == "succeeded" and done.fine_tuned_model == name and done.finished_at is not None
    assert name in [m.id for m in client.models.list()]
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    reasons = [e.data.get("phase") for e in events if isinstance(e.data, dict) and "phase" in e.data]
    assert reasons[0] == "Serving" and "Training" in reasons  # the operator's Events, newest first
    assert any(e.message.startswith("New fine-tuned model created") for e in events)

    client.models.delete(name)
    jobs.wait_phase(namespace, job.id, "Succeeded", timeout=60)
    assert name not in [m.id for m in client.models.list()]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"

    second = _job(api, model="tiny-kwok")
    jobs.running_pod(namespace, f"{second.id}-r1", timeout=90)
    assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
    jobs.wait_phase(namespace, second.id, "Suspended", timeout=60)
    wait_for("the training pods gone", lambda: not jobs.pods(namespace, f"{second.id}-r1") or None, 60)
    assert client.fine_tuning.jobs.retrieve(second.id).status == "cancelled"
