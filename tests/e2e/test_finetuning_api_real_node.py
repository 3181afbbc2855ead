"""OpenAI's fine-tuning quickstart on the real node, with the official `openai` client, unchanged but for
`base_url` and the key: upload, create, poll, list events and checkpoints, chat with `fine_tuned_model`.

The chart runs the API (`api.enabled`, one replica: the node has 2 cores) beside the operator; the client reaches
it as a user would (`kubectl port-forward` to its Service) with a ServiceAccount token of a tenant bound to the
Role docs/openai-api.md gives, and no project (the token's own namespace). The catalog's one model is a tiny
random Llama, so the run trains in seconds: what is checked is the chain, not what training learns.

Every response is re-validated with the client's own typed model (`Model.model_validate` on the JSON it was built
from: the client itself builds them without validation, so a missing field would otherwise pass), and the fields
OpenAI documents as set are checked non-null. The succeeded job's result file (`step_metrics.csv`) is read back
with `files.retrieve` and `files.content`.

The local node has no cluster DNS and no kube-proxy (hack/node.sh), so the API's pods cannot reach a model's
Service by name as they do in a real cluster: the chart's `api.env` gives them `HTTP_PROXY`, a proxy on the host
(tests/support/service_proxy.py) that maps `<service>.<namespace>.svc:8000` to a ready pod of that Service.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import install_chart, s3_client, s3_keys
from tests.support.finetuning_api import allowed, bind, service_account, token
from tests.support.portforward import port_forward
from tests.support.service_proxy import service_proxy
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MODEL = "tiny-llama"
TENANT = "quickstart"
# the Role of docs/openai-api.md (files and jobs, Events, the Secrets read as the caller)
ROLE = [
    {
        "apiGroups": ["finetune.dev"],
        "resources": ["finetunejobs"],
        "verbs": ["get", "list", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]


@pytest.fixture
def bucket(tmp_path: Path) -> Iterator[str]:
    """A bucket holding the catalog's base model (model/): a tiny random Llama that takes a 2048-token context
    (the CRD's default maxSeqLength, which API jobs get)."""
    from finetune_trainer.devtools.tiny import build_causal_lm, train_tokenizer, word_corpus

    s3 = s3_client()
    name = "e2e-api-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=name)
    model = build_causal_lm(tmp_path / "model", train_tokenizer(word_corpus()), max_position_embeddings=2048)
    for path in model.iterdir():
        s3.upload_file(str(path), name, f"model/{path.name}")
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


def _jsonl(path: Path, lines: list[str]) -> Path:
    records = [
        {"messages": [{"role": "user", "content": line}, {"role": "assistant", "content": line.split()[0]}]}
        for line in lines
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _typed(obj: Any, *set_fields: str) -> dict[str, Any]:
    """`obj` (a response of the client) validated by its own class from the JSON it came from: every field the
    class requires is there with the right type; `set_fields` (documented as set at this point) are not null."""
    raw = obj.to_dict(mode="json")
    cls = type(obj)
    missing = [n for n, f in cls.model_fields.items() if f.is_required() and (f.alias or n) not in raw]
    assert not missing, f"{cls.__name__} lacks {missing}: {raw}"
    cls.model_validate(raw)
    nulls = [n for n in set_fields if raw.get(n) is None]
    assert not nulls, f"{cls.__name__} has null {nulls}: {raw}"
    return dict(raw)


def test_openais_fine_tuning_quickstart_runs_unchanged_but_for_base_url_and_key(
    cluster: Cluster, namespace: str, images: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    from openai import OpenAI

    pod_s3 = os.environ["FTO_POD_S3_ENDPOINT"]
    gateway = urlsplit(pod_s3).hostname
    assert gateway, pod_s3
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "finetune-storage"}, "stringData": s3_keys()}
    )
    service_account(cluster, namespace, TENANT)
    bind(cluster, namespace, TENANT, ROLE)
    user = f"system:serviceaccount:{namespace}:{TENANT}"
    wait_for("the tenant's RBAC", lambda: allowed(cluster, user, namespace, "create", "finetunejobs", "finetune.dev"))
    key = token(cluster, namespace, TENANT)

    # helm's --set makes numbers of integers only (a float stays a string, which the catalog refuses): the
    # learning rate is the catalog's default
    # (11 steps: a checkpoint and a validation loss every 3, so checkpoints.list and the result file have some)
    catalog = {"name": MODEL, "baseModel": f"s3://{bucket}/model/", "epochs": 1, "batchSize": 4,
               "checkpointSteps": 3, "validationSteps": 3,
               "resources": {"gpus": 0, "cpu": "1000m", "memory": "3Gi"}}  # fmt: skip
    sets = [
        "api.enabled=true",
        "api.replicas=1",
        f"api.files.bucket={bucket}",
        f"api.files.endpoint={pod_s3}",
        *(f"api.models[0].{k}={v}" for k, v in catalog.items() if k != "resources"),
        *(f"api.models[0].resources.{k}={v}" for k, v in catalog["resources"].items()),  # type: ignore[attr-defined]
    ]
    started = time.monotonic()
    with service_proxy(cluster.api_client, gateway) as (proxy, forwarded):
        # the API's calls to S3 (the gateway) and to the API server stay direct; only Service names go through
        sets += ["api.env[0].name=HTTP_PROXY", f"api.env[0].value={proxy}", "api.env[1].name=NO_PROXY",
                 f"api.env[1].value={gateway}\\,10.0.0.1\\,localhost\\,127.0.0.1"]  # fmt: skip
        with install_chart(cluster, namespace, images, *sets) as release:
            installed = time.monotonic()
            with port_forward(cluster.kubeconfig, namespace, f"{release}-finetune-operator-api", 80) as port:
                client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=3, timeout=120)
                _quickstart(client, tmp_path, namespace)
            assert forwarded and all(name.endswith(f".{namespace}:8000") for name in forwarded), forwarded
    print(f"\nchart installed in {installed - started:.0f} s; the quickstart took {time.monotonic() - installed:.0f} s")


def _quickstart(client: Any, tmp_path: Path, namespace: str) -> None:
    from finetune_trainer.devtools.tiny import word_corpus

    corpus = word_corpus()
    wait_for("the API through port-forward", lambda: _answers(client), timeout=60, interval=1)

    with open(_jsonl(tmp_path / "train.jsonl", corpus[:48]), "rb") as train_file:
        training = client.files.create(file=train_file, purpose="fine-tune")
    with open(_jsonl(tmp_path / "valid.jsonl", corpus[48:60]), "rb") as valid_file:
        validation = client.files.create(file=valid_file, purpose="fine-tune")
    for uploaded in (training, validation):
        raw = _typed(uploaded, "id", "bytes", "created_at", "filename", "object", "purpose", "status")
        assert raw["status"] == "processed" and raw["purpose"] == "fine-tune", raw
    assert {f.id for f in client.files.list().data} >= {training.id, validation.id}

    job = client.fine_tuning.jobs.create(
        training_file=training.id, validation_file=validation.id, model=MODEL, suffix="quickstart"
    )
    job_fields = ("id", "created_at", "model", "object", "organization_id", "result_files", "seed", "status",
                  "training_file", "hyperparameters", "method")  # fmt: skip
    _typed(job, *job_fields)
    assert job.model == MODEL and job.training_file == training.id and job.organization_id == namespace

    seen: list[str] = []
    deadline = time.monotonic() + 600
    while True:
        job = client.fine_tuning.jobs.retrieve(job.id)
        _typed(job, *job_fields)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"the job is still {job.status} after 600 s: {seen}"
        time.sleep(2)
    assert job.status == "succeeded", (seen, job.error)
    raw = _typed(job, *job_fields, "fine_tuned_model", "finished_at", "trained_tokens")
    assert raw["error"] is None and raw["trained_tokens"] > 0, raw
    assert job.fine_tuned_model == f"ft:{MODEL}:{namespace}:quickstart:{job.id}"
    print(f"\nstatuses seen: {seen}")

    events = client.fine_tuning.jobs.list_events(job.id, limit=50).data
    assert events
    for event in events:
        _typed(event, "id", "created_at", "level", "message", "object")
    assert any(e.type == "metrics" for e in events), [e.message for e in events]
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints, "checkpoints every 3 steps and validation every 3: the newest and the best are named"
    for checkpoint in checkpoints:
        raw = _typed(checkpoint, "id", "created_at", "fine_tuned_model_checkpoint", "fine_tuning_job_id", "metrics",
                     "object", "step_number")  # fmt: skip
        assert raw["fine_tuning_job_id"] == job.id and raw["step_number"] > 0
        assert raw["fine_tuned_model_checkpoint"].startswith(f"{job.fine_tuned_model}:ckpt-step-")

    (result_id,) = job.result_files
    result = client.files.retrieve(result_id)
    raw = _typed(result, "id", "bytes", "created_at", "filename", "object", "purpose", "status")
    assert (raw["purpose"], raw["filename"], raw["status"]) == ("fine-tune-results", "step_metrics.csv", "processed")
    csv_text = client.files.content(result_id).text
    lines = csv_text.splitlines()
    assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(lines) > 2
    assert len(csv_text.encode()) == raw["bytes"]
    assert any(line.split(",")[3] for line in lines[1:]), csv_text  # validation losses, every 3 steps
    assert all(line.split(",")[1] for line in lines[1:]), csv_text  # a training loss each step (logged every step)
    print(f"result file {result_id}:\n{csv_text}")

    assert job.fine_tuned_model in {m.id for m in client.models.list().data}
    completion = wait_for(
        "the fine-tuned model to answer",
        lambda: _chat(client, job.fine_tuned_model),
        timeout=180,
        interval=3,
    )
    raw = _typed(completion, "id", "choices", "created", "model", "object", "usage")
    assert raw["model"] == job.fine_tuned_model and completion.usage.completion_tokens > 0, raw
    for choice in completion.choices:
        _typed(choice, "index", "message", "finish_reason")
        _typed(choice.message, "role")


def _answers(client: Any) -> bool:
    try:
        client.models.list()
        return True
    except Exception:
        return False


def _chat(client: Any, model: str) -> Any:
    """The reply, or None while the model's server is not ready yet (503 from the API, 502 from the proxy)."""
    from openai import APIStatusError

    try:
        return client.chat.completions.create(
            model=model, max_tokens=8, messages=[{"role": "user", "content": "hello there"}]
        )
    except APIStatusError as error:
        if error.status_code in (502, 503):
            return None
        raise
