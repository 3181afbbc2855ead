"""The quickstart end to end on the local cluster's real node, as `make demo` runs it.

Real images (built here with buildah, imported into containerd), the operator installed by its Helm chart
(watching only this test's namespace), the trainer fine-tuning the real SmolLM2-135M-Instruct in a pod (seeded
into S3 by the demo's own `hack/demo/seed.py`), the gate, the serving Deployment, and the endpoint answering
the official OpenAI client. Asserts the phases in order, live progress, test metrics,
artifacts and report in S3, non-root pods, readable trainer logs, and a clean cluster after delete; and that
training changed something real, measured on test questions that are paraphrases never trained on
(`hack/demo/dataset.py`): the fine-tuned model's answers score well above the base model's (ROUGE-L and exact
match, `evaluation.generation` with `compareBaseModel`), its test loss is lower but not the near-zero of a
memorised test split, and the endpoint answers a held-out question with the shop's own answer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest
import yaml

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, ROOT, VERSION, s3_client, seed_demo
from tests.support.portforward import port_forward

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

EXACT_MATCH_MIN = 0.6
"""The fine-tuned model's exact match on the 18 held-out test questions must reach this: 11 of 18 (measured 13,
docs/demo.md)."""
ROUGE_L_MIN = 0.65
"""... and its ROUGE-L (measured 0.80; the base model 0.10)."""

DEMO = ROOT / "hack" / "demo"  # the demo's scripts (seed, localize, query): the test uses them as the demo does
if str(DEMO) not in sys.path:
    sys.path.insert(0, str(DEMO))


def quickstart(namespace: str) -> dict[str, Any]:
    """examples/quickstart.yaml with the demo's local overrides and an output folder of this test's own."""
    from localize import localize

    manifest = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    manifest = localize(manifest, os.environ["FTO_POD_S3_ENDPOINT"])
    manifest["spec"]["output"]["uri"] = f"s3://artifacts/e2e/{namespace}/"
    return dict(manifest)


def test_quickstart_trains_evaluates_publishes_and_serves(cluster: Cluster, namespace: str, installed: str) -> None:
    from openai import OpenAI

    seed_demo(cluster, namespace)
    manifest = quickstart(namespace)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    phases: list[str] = []
    steps: set[int] = set()
    deadline = time.monotonic() + 1800
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (
            cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quickstart").get("status")
            or {}
        )
        phase = status.get("phase")
        if phase and (not phases or phases[-1] != phase):
            phases.append(phase)
        if phase == "Training" and (status.get("progress") or {}).get("step") is not None:
            steps.add(int(status["progress"]["step"]))
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        if phase == "Failed" or (phase == "Serving" and ready):
            break
        time.sleep(1)
    assert status.get("phase") == "Serving", f"phases {phases}, status {status}"

    # the phases in order, live progress, test metrics and the gate
    order = ["Pending", "Queued", "Training", "Evaluating", "Publishing", "Serving"]
    seen = [p for p in phases if p in order]
    assert seen == sorted(seen, key=order.index), phases
    assert "Training" in seen and seen[-1] == "Serving", phases
    # the data was checked on the node before the training Job existed, the memory plan included
    assert "Validating" in phases and phases.index("Validating") < phases.index("Training"), phases
    validation = status["validation"]
    assert validation["passed"] is True and validation["records"]["train"] > 0, validation
    assert validation["memoryPlan"]["fits"] is True and validation["memoryPlan"]["accelerator"] == "cpu", validation
    assert len(steps) >= 2, f"progress should move while training; steps seen: {sorted(steps)}"
    assert status["metrics"]["test"]["loss"] > 0
    assert status["gate"]["passed"] is True
    assert status["endpoint"]["run"] == status["run"] == 1

    # artifacts and report in S3
    s3 = s3_client()
    prefix = f"e2e/{namespace}/run-1/"
    keys_written = {
        o["Key"].removeprefix(prefix)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="artifacts", Prefix=prefix)
        for o in page.get("Contents", [])
    }
    for expected in ("metrics.json", "report.html", "model/adapter_config.json", "trainer_config.json"):
        assert expected in keys_written, f"{expected} missing under s3://artifacts/{prefix}: {sorted(keys_written)}"
    # compareBaseModel: the base model's test loss, measured before the first step, sits in metrics.json
    document = json.loads(s3.get_object(Bucket="artifacts", Key=prefix + "metrics.json")["Body"].read())
    base, tuned = document["baseModel"]["test"], status["metrics"]["test"]
    assert tuned["loss"] < 0.5 * base["loss"], f"fine-tuning should cut the test loss: base {base}, tuned {tuned}"
    # the earlier demo, whose test split copied training questions, reached 0.010; held-out paraphrases answered
    # with the shop's exact words measured 0.03-0.06 (docs/demo.md)
    assert tuned["loss"] > 0.02, f"a test loss this low means test questions were trained on: {tuned}"
    # the answers to held-out paraphrases are right (the base model, which knows no shop, gets none); measured
    # offline 13 of 18 exact (0.722), ROUGE-L 0.80 (two runs); the bounds leave two answers for CPU nondeterminism
    assert base["exact_match"] == 0.0, f"the base model cannot know the shop's answers: {base}"
    assert tuned["exact_match"] >= EXACT_MATCH_MIN, f"held-out questions should be answered right: {tuned}"
    assert tuned["rouge_l"] >= ROUGE_L_MIN, f"ROUGE-L of held-out answers: base {base}, tuned {tuned}"
    assert len(document["generation"]) == manifest["spec"]["evaluation"]["generation"]["maxSamples"]
    # validated on paraphrases every intervalSteps: the step kept is the one with the lowest validation loss
    assert document["bestStep"] is not None and document["validationHistory"], document.get("selection")

    # pods run as non-root; the trainer's log is readable through the API server and the kubelet
    pods = cluster.core.list_namespaced_pod(namespace, label_selector="finetune.dev/job=quickstart").items
    assert pods, "no pods of the FineTuneJob"
    for pod in pods:
        assert pod.spec.security_context.run_as_non_root is True, pod.metadata.name
        assert all(c.security_context.allow_privilege_escalation is False for c in pod.spec.containers)
    trainer = [p for p in pods if p.metadata.labels.get("finetune.dev/component") == "trainer"]
    assert trainer, [p.metadata.labels for p in pods]
    log = cluster.core.read_namespaced_pod_log(trainer[0].metadata.name, namespace)
    assert log.strip(), "the trainer's log is empty"

    # the endpoint answers the official OpenAI client (through kubectl port-forward: no kube-proxy here)
    service = status["endpoint"]["url"].split("//", 1)[1].split(".", 1)[0]
    # the manifest names no key: the operator generated one, in the Secret the status names (never open)
    from query import endpoint_key

    assert status["serving"]["apiKeySecret"] == "quickstart-api-key"
    key = endpoint_key(cluster.core, namespace, status)
    with port_forward(cluster.kubeconfig, namespace, service, 8000) as port:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        for _ in range(60):
            try:
                served = [m.id for m in client.models.list().data]
                break
            except Exception:
                time.sleep(1)
        else:
            raise AssertionError("the endpoint did not answer through port-forward")
        assert status["endpoint"]["model"] in served
        reply = client.chat.completions.create(
            model=status["endpoint"]["model"],
            max_tokens=24,
            temperature=0,
            messages=[{"role": "user", "content": "How do I reset my password?"}],
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        # the demo's four test questions (never trained on) get the shop's own answers, word for word, from the
        # endpoint, as `make demo` asks them (the base model invents generic ones)
        from dataset import shown_questions
        from query import ask

        shown = shown_questions()
        answers = ask(client, status["endpoint"]["model"], [q for q, _ in shown.values()], max_tokens=48)
        wrong = [(q, a, ref) for (q, ref), a in zip(shown.values(), answers, strict=True) if a != ref]
        assert not wrong, f"held-out questions answered wrong (question, answer, shop's answer): {wrong}"

    # delete: every child goes, the artifacts stay
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "quickstart")

    def leftovers() -> list[str]:
        selector = "finetune.dev/job=quickstart"
        found = [
            f"pod/{p.metadata.name}" for p in cluster.core.list_namespaced_pod(namespace, label_selector=selector).items
        ]
        found += [
            f"job/{j.metadata.name}"
            for j in cluster.batch.list_namespaced_job(namespace, label_selector=selector).items
        ]
        found += [
            f"deployment/{d.metadata.name}"
            for d in cluster.apps.list_namespaced_deployment(namespace, label_selector=selector).items
        ]
        found += [
            f"configmap/{c.metadata.name}"
            for c in cluster.core.list_namespaced_config_map(namespace, label_selector=selector).items
        ]
        found += [
            f"service/{s.metadata.name}"
            for s in cluster.core.list_namespaced_service(namespace, label_selector=selector).items
        ]
        return found

    deadline = time.monotonic() + 180
    while leftovers() and time.monotonic() < deadline:
        time.sleep(2)
    assert not leftovers(), leftovers()
    assert s3.list_objects_v2(Bucket="artifacts", Prefix=prefix + "model/")["KeyCount"] > 0
