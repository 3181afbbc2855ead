"""hf:// sources on the real node: a FineTuneJob names its model and its data as Hub repos, with a pinned
revision and a token; the validation pod (trainer image) resolves and copies them from a real Hub-compatible
server (olah, offline, over git repos built here, on the bridge gateway where pods reach the host; a gate in
front of it asks for the token as a gated repo would), the training pod reads only the copy, the endpoint
serves and answers, the status shows the commits, and a second run of the same commits copies nothing.

Cheap by design: a tiny random Llama and 48 chat records (as test_tracking_real_node.py). Written beside the
feature; see docs/hub.md for what it adds to tests/trainer/test_hub_sources.py.
"""

from __future__ import annotations

import base64
import io
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
from tests.e2e.conftest import GROUP, PLURAL, VERSION, install_chart, s3_client, wait_phase
from tests.support.hub_server import commit_files, olah_server
from tests.support.portforward import port_forward
from tests.trainer.hub_gate import HubGate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

TOKEN = "hf_e2e_token"


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """olah on the bridge gateway serving a tiny model repo (tag v1) and a chat dataset repo, behind a gate that
    wants TOKEN; yields (the gate's URL, the commits)."""
    from finetune_trainer.devtools.tiny import build_causal_lm, train_tokenizer, word_corpus

    host = urlsplit(os.environ["FTO_POD_S3_ENDPOINT"]).hostname
    assert host, os.environ["FTO_POD_S3_ENDPOINT"]
    corpus = word_corpus()
    model = build_causal_lm(tmp_path / "model", train_tokenizer(corpus))
    mirrors = tmp_path / "mirrors"
    commits = {"model": commit_files(mirrors / "models/e2e/tiny-llama", model, "tiny llama", tag="v1")}
    rows = [
        {"messages": [{"role": "user", "content": line}, {"role": "assistant", "content": line.split()[0]}]}
        for line in corpus[:48]
    ]
    data = {"data/train-00000-of-00001.parquet": _parquet(rows), "README.md": b"# e2e chat data\n"}
    commits["data"] = commit_files(mirrors / "datasets/e2e/chat", data, "chat data")
    with olah_server(mirrors, tmp_path / "olah", host=host) as url, HubGate(url, token=TOKEN, host=host) as gate:
        yield gate.url, commits


def _manifest(name: str, bucket: str, serve: bool) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "hf://e2e/tiny-llama", "revision": "v1", "tokenSecret": {"name": "hf-token"}},
            "dataset": {
                "train": {"uri": "hf://datasets/e2e/chat", "tokenSecret": {"name": "hf-token"}},
                "schema": "chat",
                "maxSeqLength": 64,
                "split": {"validation": 0.125, "test": 0.125},
            },
            "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8}},
            "hyperparameters": {"maxSteps": 4, "batchSize": 4, "learningRate": 0.01},
            "resources": {"gpus": 0, "cpu": "1", "memory": "3Gi"},
            "output": {"uri": f"s3://{bucket}/out/"},
            "storage": {"credentialsSecret": "s3-creds", "endpoint": os.environ["FTO_POD_S3_ENDPOINT"]},
            "serving": {"enabled": serve},
        },
    }


def test_a_job_of_hub_sources_trains_serves_and_a_second_run_copies_nothing(
    cluster: Cluster, namespace: str, images: dict[str, str], hub: tuple[str, dict[str, str]]
) -> None:
    endpoint, commits = hub
    s3 = s3_client()
    bucket = "e2e-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    keys = {
        "AWS_ACCESS_KEY_ID": os.environ["FTO_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": os.environ["FTO_S3_SECRET_KEY"],
    }
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": keys})
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-token"}, "stringData": {"token": TOKEN}})
    try:
        _run(cluster, namespace, images, endpoint, commits, bucket, s3)
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)


def _run(
    cluster: Cluster,
    namespace: str,
    images: dict[str, str],
    endpoint: str,
    commits: dict[str, str],
    bucket: str,
    s3: Any,
) -> None:
    with install_chart(cluster, namespace, images, f"hub.endpoint={endpoint}"):
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _manifest("hub", bucket, True)
        )
        status = wait_phase(cluster, namespace, "hub", ("Serving", "Failed"), 1200)
        assert status["phase"] == "Serving", status
        sources = {s["field"]: s for s in status["validation"]["sources"]}
        assert sources["baseModel.uri"]["commit"] == commits["model"]
        assert sources["dataset.train.uri"]["commit"] == commits["data"]
        assert sources["baseModel.uri"]["copiedFiles"] > 0
        assert TOKEN not in json.dumps(status)
        record = s3.get_object(Bucket=bucket, Key="out/run-1/hub-sources.json")["Body"].read()
        assert commits["model"] in record.decode()

        service = status["endpoint"]["url"].split("//", 1)[1].split(".", 1)[0]
        secret = status["serving"]["apiKeySecret"]  # generated by the operator: read as a user would
        key = base64.b64decode(cluster.core.read_namespaced_secret(secret, namespace).data["apiKey"]).decode()
        with port_forward(cluster.kubeconfig, namespace, service, 8000) as port:
            from openai import OpenAI

            openai = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            for _ in range(60):
                try:
                    openai.models.list()
                    break
                except Exception:
                    time.sleep(1)
            reply = openai.chat.completions.create(
                model=status["endpoint"]["model"], max_tokens=8, messages=[{"role": "user", "content": "hello"}]
            )
            assert reply.usage is not None and reply.usage.completion_tokens > 0

        # a second run of the same job and sources (a new maxSeqLength: a new data check and a new run-2 in the same
        # output, whose hub cache it shares): the check resolves the same commits, finds the cache, copies nothing.
        # A second FineTuneJob on the same output.uri would be refused (its run folder is the first job's).
        cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "hub", {"spec": {"dataset": {"maxSeqLength": 48}}}
        )
        deadline = time.monotonic() + 1200
        again: dict[str, Any] = {}
        while time.monotonic() < deadline:
            again = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "hub")["status"]
            checked = (again.get("validation") or {}).get("run") == 2
            if again.get("run") == 2 and checked and again.get("phase") in ("Serving", "Failed"):
                break
            time.sleep(2)
        assert again.get("run") == 2 and again["phase"] == "Serving", again
        assert [s["copiedFiles"] for s in again["validation"]["sources"]] == [0, 0]
        assert {s["commit"] for s in again["validation"]["sources"]} == set(commits.values())
