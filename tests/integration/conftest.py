"""Fixtures of the cluster tier: the CRD installed once, the operator as a subprocess, FineTuneJob helpers.

The operator runs as `python -m finetune_operator` (exactly what the image runs) against the test
kubeconfig, watching only the test's namespace(s). kwok pods stand in for the trainer: a test scripts a
training pod's end by setting the annotations hack/kwok/stages.yaml reads (`kwok.finetune.dev/exit-code`,
`kwok.finetune.dev/termination-message`, `kwok.finetune.dev/delay`), either on every pod of a job through
`spec.podMetadata.annotations` or on one running pod with a patch (`finish_pod`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.crds import install_crd
from tests.support.kwok import DELAY, EXIT_CODE, KWOK_NODE_SELECTOR, KWOK_TOLERATION, MESSAGE, REASON
from tests.support.waiting import wait_for

ROOT = Path(__file__).parents[2]
CRD_PATH = ROOT / "crds" / "finetunejob.yaml"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
T = TypeVar("T")


def success_message(test_loss: float = 1.4, **extra: float) -> str:
    metrics = {"validation": {"loss": test_loss + 0.05}, "test": {"loss": test_loss, **extra}}
    return json.dumps({"code": "Succeeded", "message": "trained 12 steps", "run": 1, "metrics": metrics})


def ftj_manifest(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """A small valid FineTuneJob whose pods land on kwok's fake GPU nodes."""
    spec: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/tiny/"},
        "dataset": {"train": {"uri": "s3://data/chat.jsonl"}, "schema": "chat"},
        # pinned to kwok's fake nodes: the real node (if up) must not get pods whose image is fake
        "resources": {
            "gpus": 1,
            "memory": "1Gi",
            "cpu": "1",
            "tolerations": [KWOK_TOLERATION],
            "nodeSelector": KWOK_NODE_SELECTOR,
        },
        "output": {"uri": f"s3://artifacts/{name[:40]}/"},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def kwok_annotations(exit_code: int, message: str = "", delay: str = "", reason: str = "") -> dict[str, str]:
    out = {EXIT_CODE: str(exit_code)}
    if message:
        out[MESSAGE] = message
    if delay:
        out[DELAY] = delay
    if reason:
        out[REASON] = reason
    return out


@dataclass
class Operator:
    """The operator as a child process; stop() kills it (like a crash), start() runs a fresh one."""

    kubeconfig: Path
    namespaces: list[str]
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        args = [
            sys.executable,
            "-m",
            "finetune_operator",
            "--health-port",
            "0",
            "--secret-recheck-seconds",
            "1",
            # a deleted generated key Secret is noticed on this timer (Secrets are not watched)
            "--key-recheck-seconds",
            "2",
            "--trainer-image",
            "registry.local/finetune-trainer:test",
            # the control-loop tests script the training pod; the Validating phase has its own tests, which
            # pass --validation (the last flag wins), and the chart's default (on) runs in the e2e tier
            "--no-validation",
            *self.extra_args,
        ]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def crd(cluster: Any) -> str:
    """Install the FineTuneJob CRD (and the ModelServer CRD, which the operator watches too); wait until served."""
    install_crd(cluster.api_client, ROOT / "crds" / "modelserver.yaml")
    return install_crd(cluster.api_client, CRD_PATH)


@pytest.fixture
def operator_factory(
    cluster: Any, crd: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def make(*namespaces: str, args: list[str] | None = None) -> Operator:
        op = Operator(cluster.kubeconfig, list(namespaces), tmp_path / f"operator-{len(started)}.log", args or [])
        started.append(op.start())
        return op

    yield make
    for op in started:
        op.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for op in started:
            print(f"--- operator log ({op.log_path}) ---\n{op.log_tail()}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def operator(operator_factory: Callable[..., Operator], namespace: str) -> Operator:
    """The operator watching this test's namespace, with a backoff limit of 2."""
    return operator_factory(namespace, args=["--backoff-limit", "2"])


@pytest.fixture
def other_namespace(cluster: Any) -> Iterator[str]:
    from kubernetes import client

    name = "t-other-" + uuid.uuid4().hex[:8]
    cluster.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"finetune.dev/test": "true"}))
    )
    yield name
    cluster.core.delete_namespace(name, propagation_policy="Background")


class Jobs:
    """FineTuneJob operations and reads for one test, through the real API."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, manifest
        )
        return created

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        return found

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(namespace, name).get("status") or {}
        return status

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            f"{name} phase {phase}",
            lambda: ((s := self.status(namespace, name)).get("phase") == phase and s) or None,
            timeout=timeout,
        )

    def training_jobs(self, namespace: str, name: str) -> list[Any]:
        uid = self.get(namespace, name)["metadata"]["uid"]
        items: list[Any] = self.cluster.batch.list_namespaced_job(
            namespace, label_selector=f"finetune.dev/job-uid={uid}"
        ).items
        return items

    def check_pods(self, namespace: str, name: str, run: int = 1) -> list[Any]:
        """Run `run`'s data-check pods, the bare pods the operator makes itself (finetunejob/validation_pod.py)."""
        uid = self.get(namespace, name)["metadata"]["uid"]
        selector = f"finetune.dev/job-uid={uid},finetune.dev/component=validator,finetune.dev/run={run}"
        items: list[Any] = self.cluster.core.list_namespaced_pod(namespace, label_selector=selector).items
        return sorted(items, key=lambda p: p.metadata.name)

    def check_pod(self, namespace: str, name: str, run: int = 1, timeout: float = 60) -> Any:
        """The running attempt of run `run`'s data check (kwok starts it)."""
        return wait_for(
            f"a running data-check pod of {name} run {run}",
            lambda: next(
                (
                    p
                    for p in self.check_pods(namespace, name, run)
                    if p.status.phase == "Running" and not p.metadata.deletion_timestamp
                ),
                None,
            ),
            timeout=timeout,
        )

    def pods(self, namespace: str, job_name: str) -> list[Any]:
        items: list[Any] = self.cluster.core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
        ).items
        return items

    def running_pod(self, namespace: str, job_name: str, timeout: float = 60) -> Any:
        return wait_for(
            f"a running pod of {job_name}",
            lambda: next(
                (
                    p
                    for p in self.pods(namespace, job_name)
                    if p.status.phase == "Running" and not p.metadata.deletion_timestamp
                ),
                None,
            ),
            timeout=timeout,
        )

    def finish_pod(self, namespace: str, pod_name: str, exit_code: int, message: str = "", reason: str = "") -> None:
        """Script a running kwok pod's end (hack/kwok/stages.yaml: pod-exit); `reason`: e.g. OOMKilled."""
        self.cluster.core.patch_namespaced_pod(
            pod_name,
            namespace,
            {"metadata": {"annotations": kwok_annotations(exit_code, message, delay="100ms", reason=reason)}},
        )


@pytest.fixture
def jobs(cluster: Any) -> Jobs:
    return Jobs(cluster)


@pytest.fixture
def s3_secret(cluster: Any, namespace: str) -> str:
    from kubernetes import client

    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s3-creds"),
            string_data={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret"},
        ),
    )
    return "s3-creds"
