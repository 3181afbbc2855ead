"""A real training pod on the local cluster's real node, evicted (as a drain does) and then its kubelet restarted.

The real trainer image trains a tiny Llama from S3 with a checkpoint every `INTERVAL` steps. Faults:
- the pod is evicted through the Eviction API once the run is past its second checkpoint: the trainer gets
  SIGTERM, writes a checkpoint and exits 75 (Preempted), the Job (podFailurePolicy: DisruptionTarget ignored)
  starts a replacement, which resumes. Figures: the step it stopped at, the step it resumed from (steps lost,
  against the interval), seconds until the replacement runs and until it has resumed;
- the node's kubelet is stopped and started again (hack/cluster.sh up) while the replacement trains: the
  container keeps running (containerd owns it), so the same pod must go on with no step lost.
Shared by tests/e2e/test_chaos_real_node.py and `bench/chaos.py`; the caller runs the operator on `namespace`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune_operator.api.labels import Names
from finetune_operator.builders.rbac import PROGRESS_KEY
from kubernetes.client.exceptions import ApiException

from tests.support.chaos import Components, evict
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 5
STEPS = 120  # the replacement after the eviction must still be training when the kubelet restarts (0.2 s a step)
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
RESUMED = re.compile(r"resuming from \S+ \(step (\d+)\)")
STOPPED = re.compile(r"at step (\d+)")


def seed(s3: Any, bucket: str, workdir: Path) -> tuple[str, str]:
    """The tiny Llama and arithmetic data in `bucket`; returns (model URI, data URI)."""
    from tests.trainer.builders import arithmetic_records, build_tiny_llama, put_jsonl, upload_folder

    s3.create_bucket(Bucket=bucket)
    model = upload_folder(s3, bucket, build_tiny_llama(workdir / "tiny-llama"), "models/tiny")
    return model, put_jsonl(s3, bucket, "data/train.jsonl", arithmetic_records(400))


@contextlib.contextmanager
def operator_process(namespace: str, kubeconfig: Path, trainer_image: str, log: Path) -> Iterator[None]:
    """`python -m finetune_operator` (what the image runs) on `namespace` only, from this checkout, for the block:
    no validation Job (the tiny data needs none), the node's own images (never pulled)."""
    with log.open("wb") as out:
        operator = subprocess.Popen(
            [sys.executable, "-m", "finetune_operator", "-n", namespace, "--health-port", "0", "--no-validation",
             "--trainer-image", trainer_image, "--image-pull-policy", "Never"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(REPO / "operator")},
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
        try:
            yield
        finally:
            operator.terminate()
            operator.wait(30)


def manifest(name: str, model: str, data: str, bucket: str, pod_s3_endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": model, "task": "causal-lm"},
            "dataset": {
                "train": {"uri": data},
                "schema": "prompt-completion",
                "maxSeqLength": 64,
                "split": {"validation": 0.05, "test": 0.05, "seed": 1},
            },
            "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "targetModules": ["all-linear"]}},
            "hyperparameters": {"maxSteps": STEPS, "learningRate": 0.01, "batchSize": 8},
            "checkpointing": {"intervalSteps": INTERVAL, "keep": 2},
            "resources": {"gpus": 0, "cpu": "1", "memory": "3Gi"},  # no GPU, no kwok toleration: the real node
            "output": {"uri": f"s3://{bucket}/out/"},
            "storage": {"credentialsSecret": "s3-creds", "endpoint": pod_s3_endpoint},
            "serving": {"enabled": False},
        },
    }


def _step(core: Any, namespace: str, name: str) -> int:
    """The step the trainer last reported, read from its progress ConfigMap (the channel it writes: the operator
    copies it into status.progress on its own schedule, every few seconds, which a 60-step tiny run can outpace
    between two disruptions)."""
    try:
        data = core.read_namespaced_config_map(Names.of(name).progress, namespace).data or {}
    except ApiException as error:
        if error.status == 404:
            return 0
        raise
    return int(json.loads(data.get(PROGRESS_KEY) or "{}").get("step") or 0)


def _running_trainer(core: Any, namespace: str, other_than: str = "") -> Any:
    pods = core.list_namespaced_pod(namespace, label_selector="finetune.dev/component=trainer").items
    return next(
        (
            p
            for p in pods
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp and p.metadata.name != other_than
        ),
        None,
    )


def disrupt(core: Any, custom: Any, namespace: str, name: str, components: Components) -> dict[str, Any]:
    """The FineTuneJob `name` exists in `namespace`; evict its pod, then restart the kubelet. Returns figures."""
    wait_for("two checkpoints' worth of steps", lambda: _step(core, namespace, name) >= 2 * INTERVAL + 2, 900, 0.5)
    victim = wait_for("the training pod", lambda: _running_trainer(core, namespace), 60)
    evicted_at = time.monotonic()
    evict(core, namespace, victim.metadata.name)

    def last_words() -> Any:
        pod = core.read_namespaced_pod(victim.metadata.name, namespace)
        statuses = pod.status.container_statuses or []
        return statuses[0].state.terminated if statuses and statuses[0].state.terminated else None

    terminated = wait_for("the evicted trainer to exit", last_words, 300, 0.5)
    report = json.loads(terminated.message or "{}")
    stopped = STOPPED.search(report.get("message", ""))
    replacement = wait_for(
        "a replacement pod running", lambda: _running_trainer(core, namespace, victim.metadata.name), 600, 0.5
    )
    running_after = time.monotonic() - evicted_at

    def resumed_step() -> int | None:
        found = RESUMED.search(core.read_namespaced_pod_log(replacement.metadata.name, namespace))
        return int(found.group(1)) if found else None

    resumed = wait_for("the replacement to resume", resumed_step, 600, 1)
    resumed_after = time.monotonic() - evicted_at
    eviction = {
        "exit_code": terminated.exit_code,
        "code": report.get("code"),
        "stopped_at_step": int(stopped.group(1)) if stopped else None,
        "resumed_from_step": resumed,
        "steps_lost": (int(stopped.group(1)) - resumed) if stopped else None,
        "checkpoint_interval": INTERVAL,
        "replacement_running_after_seconds": round(running_after, 1),
        "resumed_after_seconds": round(resumed_after, 1),
    }

    # the kubelet restarted under the replacement, once it trains again
    wait_for("the replacement to train past its resume", lambda: _step(core, namespace, name) > resumed, 600, 0.5)
    before = _step(core, namespace, name)
    down_and_back = components.restart("kubelet")
    wait_for("progress after the kubelet restart", lambda: _step(core, namespace, name) > before, 600, 0.5)
    pod = core.read_namespaced_pod(replacement.metadata.name, namespace)
    kubelet = {
        "down_and_back_seconds": round(down_and_back, 1),
        "step_before": before,
        "same_pod_running": pod.status.phase == "Running" and not pod.metadata.deletion_timestamp,
        "container_restarts": sum(s.restart_count for s in pod.status.container_statuses or []),
        # the same container went on (no restart, no resume): nothing trained was lost
        "steps_lost": 0 if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp else None,
    }
    return {"eviction": eviction, "kubelet_restart": kubelet}
