"""Kubeflow Trainer v2's controller manager and the JobSet controller as local processes beside the kwok cluster.

What bench/kubeflow_compare.py measures our operator against. Both binaries are built from their Go modules by
hack/kubeflow-trainer.sh (versions pinned in hack/versions.env), which also copies their CRDs beside them.

How they run here, and why:
- As processes, not Deployments: the kwok nodes run no containers. Each runs on the cluster's admin kubeconfig
  (as Kueue does in tests/integration/kueue_local.py), cluster-wide, with leader election off.
- Their admission webhooks are registered as upstream ships them (same paths, rules, operations and the pod
  webhooks' objectSelector; from Trainer's manifests/base/webhook and JobSet's config/components/webhook), but
  with `url: https://127.0.0.1:<port>/...` and a CA made here instead of a Service and the controllers' own
  certificate rotation (switched off: it rewrites a Secret and the webhook configurations of a Service that does
  not exist here). The webhooks matter: JobSet's defaulting webhook fills in what its controller expects
  (success policy, completion mode, DNS hostnames), and Trainer's validates every TrainJob.
- Trainer's configuration is the one it ships (manifests/base/manager/controller_manager_config.yaml: TrainJob
  concurrency 5) with the addresses changed; JobSet's the defaults of its binary (QPS 500, burst 500).
- Metrics: each controller counts its own API requests in controller-runtime's `rest_client_requests_total`.
  Trainer's metrics are served over plain HTTP on 127.0.0.1 (secureServing: false); JobSet always serves them over
  HTTPS behind a TokenReview/SubjectAccessReview filter, so the benchmark reads them with a ServiceAccount token
  allowed `get /metrics` (each scrape costs JobSet those two reviews: 2-4 requests, against thousands).
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.certs import serving_certificates
from tests.support.crds import install_crd
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TRAINER_API = ("trainer.kubeflow.org", "v1alpha1")
RUNTIME = "fto-bench-single-gpu"
WEBHOOKS = "fto-bench-kubeflow"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
METRICS_READER = "fto-bench-metrics-reader"
METRICS_NAMESPACE = "kube-system"


def built_dir() -> Path:
    """The folder hack/kubeflow-trainer.sh built (binaries, crds/, stamp); a clear error when it is not built."""
    result = subprocess.run(
        [str(ROOT / "hack" / "kubeflow-trainer.sh"), "dir"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(
            "Kubeflow Trainer and JobSet are not built: run hack/kubeflow-trainer.sh build "
            f"(minutes, cold)\n{result.stderr.strip()}"
        )
    return Path(result.stdout.strip())


def _hook(name: str, port: int, path: str, ca: bytes, rule: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": base64.b64encode(ca).decode()},
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "timeoutSeconds": 10,
        "rules": [rule],
        **extra,
    }


def _rule(group: str, version: str, resource: str, operations: list[str]) -> dict[str, Any]:
    return {"apiGroups": [group], "apiVersions": [version], "resources": [resource], "operations": operations}


def webhook_configurations(trainer_port: int, jobset_port: int, ca: bytes) -> list[dict[str, Any]]:
    """Upstream's webhooks (Trainer v2.2.0 manifests/base/webhook/manifests.yaml; JobSet v0.11.1
    config/components/webhook with its patches), pointed at the local processes."""
    trainer, jobset = "trainer.kubeflow.org", "jobset.x-k8s.io"
    create_update = ["CREATE", "UPDATE"]
    jobset_pods = {"objectSelector": {"matchExpressions": [{"key": JOBSET_NAME_LABEL, "operator": "Exists"}]}}
    meta = {"name": WEBHOOKS, "labels": {"app.kubernetes.io/part-of": "finetune-operator-bench"}}
    mutating = [
        _hook(
            "defaulter.trainjob.trainer.kubeflow.org",
            trainer_port,
            "/mutate-trainer-kubeflow-org-v1alpha1-trainjob",
            ca,
            _rule(trainer, "v1alpha1", "trainjobs", create_update),
        ),
        _hook(
            "mjobset.kb.io",
            jobset_port,
            "/mutate-jobset-x-k8s-io-v1alpha2-jobset",
            ca,
            _rule(jobset, "v1alpha2", "jobsets", ["CREATE"]),
        ),
        _hook("mpod.kb.io", jobset_port, "/mutate--v1-pod", ca, _rule("", "v1", "pods", ["CREATE"]), **jobset_pods),
    ]
    validating = [
        *(
            _hook(
                f"validator.{kind}.trainer.kubeflow.org",
                trainer_port,
                f"/validate-trainer-kubeflow-org-v1alpha1-{kind}",
                ca,
                _rule(trainer, "v1alpha1", f"{kind}s", create_update),
            )
            for kind in ("clustertrainingruntime", "trainingruntime", "trainjob")
        ),
        _hook(
            "vjobset.kb.io",
            jobset_port,
            "/validate-jobset-x-k8s-io-v1alpha2-jobset",
            ca,
            _rule(jobset, "v1alpha2", "jobsets", create_update),
        ),
        _hook("vpod.kb.io", jobset_port, "/validate--v1-pod", ca, _rule("", "v1", "pods", ["CREATE"]), **jobset_pods),
    ]
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": meta,
            "webhooks": mutating,
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": meta,
            "webhooks": validating,
        },
    ]


def cluster_training_runtime(pod_annotations: dict[str, str], toleration: dict[str, str]) -> dict[str, Any]:
    """One node, one pod, one GPU: the shape of a single-GPU FineTuneJob's training pod (1 CPU, 1 Gi, 1 GPU) on
    the kwok nodes, with the annotations that tell kwok how long the pod runs and how it ends."""
    resources = {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}
    return {
        "apiVersion": "/".join(TRAINER_API),
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": RUNTIME},
        "spec": {
            "mlPolicy": {"numNodes": 1},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                "spec": {
                                    "template": {
                                        "metadata": {"annotations": pod_annotations},
                                        "spec": {
                                            "tolerations": [toleration],
                                            "containers": [
                                                {
                                                    "name": "node",
                                                    "image": "registry.local/finetune-trainer:bench",
                                                    "resources": {"requests": resources, "limits": resources},
                                                }
                                            ],
                                        },
                                    }
                                },
                            },
                        }
                    ]
                }
            },
        },
    }


def train_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "/".join(TRAINER_API),
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {"runtimeRef": {"name": RUNTIME}},
    }


def rest_client_requests(text: str) -> float:
    """The sum of controller-runtime's client request counter (every verb, every answer) in a metrics page."""
    return sum(
        float(line.rsplit(maxsplit=1)[-1])
        for line in text.splitlines()
        if line.startswith("rest_client_requests_total")
    )


@dataclass
class LocalKubeflow:
    """Trainer + JobSet, installed once (CRDs, webhooks, the runtime) and started fresh for each arm."""

    api_client: Any
    kubeconfig: Path
    folder: Path
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    binaries: dict[str, Path] = field(default_factory=dict)
    ca: bytes = b""
    token: str = ""

    def install(self, pod_annotations: dict[str, str], toleration: dict[str, str]) -> None:
        """CRDs, certificates, ports, the metrics reader; then a first start to apply the webhooks and the
        runtime (its creation goes through Trainer's validating webhook, so Trainer must be up)."""
        built = built_dir()
        for crd in sorted((built / "crds").glob("*.yaml")):
            install_crd(self.api_client, crd)
        self.binaries = {"trainer": built / "trainer-controller-manager", "jobset": built / "jobset"}
        self.ca = serving_certificates(self.folder / "certs", "fto-bench-kubeflow-ca")
        names = ("webhook", "metrics", "health")
        self.ports = {f"{who}-{what}": free_port() for who in ("trainer", "jobset") for what in names}
        self.token = self._metrics_token()
        self.start()
        self._apply_all(webhook_configurations(self.ports["trainer-webhook"], self.ports["jobset-webhook"], self.ca))
        self._apply_all([cluster_training_runtime(pod_annotations, toleration)])

    def _apply_all(self, manifests: list[dict[str, Any]]) -> None:
        from kubernetes import dynamic

        client = dynamic.DynamicClient(self.api_client)
        for manifest in manifests:
            resource = client.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
            client.server_side_apply(resource, manifest, field_manager="fto-bench", force_conflicts=True)

    def _metrics_token(self) -> str:
        """A ServiceAccount token allowed `get /metrics` (JobSet's metrics filter asks the API server)."""
        from kubernetes import client

        rbac, core = client.RbacAuthorizationV1Api(self.api_client), client.CoreV1Api(self.api_client)
        role = {
            "metadata": {"name": METRICS_READER},
            "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
        }
        binding = {
            "metadata": {"name": METRICS_READER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": METRICS_READER},
            "subjects": [{"kind": "ServiceAccount", "name": METRICS_READER, "namespace": METRICS_NAMESPACE}],
        }
        for create in (
            lambda: core.create_namespaced_service_account(METRICS_NAMESPACE, {"metadata": {"name": METRICS_READER}}),
            lambda: rbac.create_cluster_role(role),
            lambda: rbac.create_cluster_role_binding(binding),
        ):
            try:
                create()
            except client.ApiException as error:
                if error.status != 409:
                    raise
        request = {"spec": {"audiences": [], "expirationSeconds": 24 * 3600}}
        answer = core.create_namespaced_service_account_token(METRICS_READER, METRICS_NAMESPACE, request)
        return str(answer.status.token)

    def _configs(self) -> dict[str, Path]:
        trainer = {
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
            "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['trainer-health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports['trainer-metrics']}", "secureServing": False},
            "webhook": {"port": self.ports["trainer-webhook"], "host": "127.0.0.1"},
            "leaderElection": {"leaderElect": False},
            "controller": {
                "groupKindConcurrency": {
                    "TrainJob.trainer.kubeflow.org": 5,
                    "TrainingRuntime.trainer.kubeflow.org": 1,
                    "ClusterTrainingRuntime.trainer.kubeflow.org": 1,
                }
            },
            "certManagement": {"enable": False},
        }
        jobset = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['jobset-health']}"},
            "metrics": {
                "bindAddress": f"127.0.0.1:{self.ports['jobset-metrics']}",
                "certDir": str(self.folder / "certs"),
            },
            "webhook": {
                "port": self.ports["jobset-webhook"],
                "host": "127.0.0.1",
                "certDir": str(self.folder / "certs"),
            },
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
        }
        paths = {}
        for name, config in (("trainer", trainer), ("jobset", jobset)):
            paths[name] = self.folder / f"{name}-config.yaml"
            paths[name].write_text(yaml.safe_dump(config))
        return paths

    def start(self) -> None:
        """Both controllers, fresh (so each arm's peak RSS is its own), once both answer /readyz."""
        configs = self._configs()
        # Trainer has no webhook certDir setting: controller-runtime's default is $TMPDIR/k8s-webhook-server/
        # serving-certs, so its TMPDIR is a folder of this run's with the certificates there.
        trainer_tmp = self.folder / "trainer-tmp"
        serving = trainer_tmp / "k8s-webhook-server" / "serving-certs"
        serving.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (serving / name).write_bytes((self.folder / "certs" / name).read_bytes())
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        commands = {
            "trainer": (
                [str(self.binaries["trainer"]), f"--config={configs['trainer']}"],
                {"TMPDIR": str(trainer_tmp)},
            ),
            "jobset": ([str(self.binaries["jobset"]), f"--config={configs['jobset']}", "--zap-log-level=info"], {}),
        }
        for name, (command, extra) in commands.items():
            log = (self.folder / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(command, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT)
        for name in commands:
            self._wait_ready(name)

    def _wait_ready(self, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ports[f'{name}-health']}/readyz"
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{name} not ready after {timeout:.0f}s:\n{self.log_tail(name)}")

    def requests(self) -> dict[str, float]:
        """Each controller's API requests so far (its own client counter)."""
        trainer = f"http://127.0.0.1:{self.ports['trainer-metrics']}/metrics"
        with urllib.request.urlopen(trainer, timeout=10) as response:
            trainer_text = response.read().decode()
        context = ssl.create_default_context(cadata=self.ca.decode())
        jobset = urllib.request.Request(
            f"https://127.0.0.1:{self.ports['jobset-metrics']}/metrics",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(jobset, timeout=10, context=context) as response:
            jobset_text = response.read().decode()
        return {"trainer": rest_client_requests(trainer_text), "jobset": rest_client_requests(jobset_text)}

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes = {}

    def uninstall(self) -> None:
        """Webhooks first (a dead webhook with failurePolicy Fail blocks every TrainJob and JobSet create)."""
        from kubernetes import client

        admission = client.AdmissionregistrationV1Api(self.api_client)
        for delete in (
            admission.delete_mutating_webhook_configuration,
            admission.delete_validating_webhook_configuration,
        ):
            try:
                delete(WEBHOOKS)
            except client.ApiException as error:
                if error.status != 404:
                    raise
        self.stop()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.folder / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
