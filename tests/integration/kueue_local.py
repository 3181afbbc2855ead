"""Kueue (sigs.k8s.io/kueue, built from the Go module proxy) as a local process against the test cluster.

Why a process and not a Deployment: the local cluster's nodes are kwok fakes that run no containers. Kueue's
webhooks are registered with `url: https://127.0.0.1:<port>/...` and a CA made here; its controllers run on
the test kubeconfig. Kueue is confined so that other tests sharing the cluster never meet it: it manages Jobs
only in namespaces labelled `finetune.dev/kueue-test=true` (managedJobsNamespaceSelector, always respected
since Kueue 0.15), and its webhooks only see Jobs with a queue name in such namespaces.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helm.chart import kubectl
from tests.support.certs import serving_certificates
from tests.support.ports import free_port
from tests.support.versions import pinned
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
KUEUE_VERSION = pinned("KUEUE_VERSION")
CACHE = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
BINARY = CACHE / "kueue" / KUEUE_VERSION / "kueue"
OPT_IN = "finetune.dev/kueue-test"
WEBHOOKS = "finetune-test-kueue"
METRICS_CERTS = Path("/etc/kueue/metrics/certs")


def module_dir() -> Path:
    """Kueue's sources (CRDs, webhook paths) from the Go module cache, downloading them if needed."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kueue@{KUEUE_VERSION}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return Path(json.loads(out)["Dir"])


def build() -> Path:
    """The manager binary, built once per version into the cache by hack/build-binaries.sh (instant after).

    Always through the script, never a bare existence check: CI builds Kueue in the background, and the script
    waits for that build to finish (its lock) where a check could find a half-written binary."""
    subprocess.run([str(ROOT / "hack" / "build-binaries.sh"), "kueue"], check=True, timeout=3600)
    return BINARY


def _webhooks(port: int, ca: bytes) -> list[dict[str, Any]]:
    """Kueue's Job webhooks only (default suspend + queue checks), pointed at the local process."""
    scope = {
        "namespaceSelector": {"matchLabels": {OPT_IN: "true"}},
        "objectSelector": {"matchExpressions": [{"key": "kueue.x-k8s.io/queue-name", "operator": "Exists"}]},
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 10,
    }
    bundle = base64.b64encode(ca).decode()

    def hook(name: str, path: str, operations: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle},
            "rules": [
                {
                    "apiGroups": ["batch"],
                    "apiVersions": ["v1"],
                    "operations": operations,
                    "resources": ["jobs"],
                }
            ],
            **scope,
        }

    meta = {"name": WEBHOOKS, "labels": {"app.kubernetes.io/part-of": "finetune-operator-tests"}}
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": meta,
            "webhooks": [hook("mjob.kb.io", "/mutate-batch-v1-job", ["CREATE"])],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": meta,
            "webhooks": [hook("vjob.kb.io", "/validate-batch-v1-job", ["CREATE", "UPDATE"])],
        },
    ]


@dataclass
class LocalKueue:
    kubeconfig: Path
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.folder / "kueue.log"

    def _established(self, crd: str) -> bool:
        """The CRD's Established condition is True. Read, not `kubectl wait`: on a CRD just created, before the
        API server wrote any condition, `kubectl wait` fails at once ("status.conditions accessor error")."""
        out = kubectl("get", f"crd/{crd}.kueue.x-k8s.io", "-o", "json", kubeconfig=self.kubeconfig).stdout
        conditions = (json.loads(out).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    def start(self) -> LocalKueue:
        binary, source = build(), module_dir()
        crds = source / "config" / "components" / "crd" / "bases"
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds), kubeconfig=self.kubeconfig)
        for crd in ("clusterqueues", "localqueues", "resourceflavors", "workloads"):
            wait_for(f"the {crd}.kueue.x-k8s.io CRD to be Established", lambda crd=crd: self._established(crd), 60, 1)
        self.ports = {name: free_port() for name in ("webhook", "health", "visibility")}
        ca = serving_certificates(self.folder / "certs", "kueue-test-ca")
        # Kueue 0.17 without internal cert management reads its metrics certificate from this fixed path
        # (cmd/kueue/main.go) and exits without it, even with metrics off: give it the same self-signed pair.
        try:
            METRICS_CERTS.mkdir(parents=True, exist_ok=True)
            for name in ("tls.crt", "tls.key"):
                (METRICS_CERTS / name).write_bytes((self.folder / "certs" / name).read_bytes())
        except PermissionError as error:
            raise AssertionError(f"Kueue {KUEUE_VERSION} reads its metrics certificate from {METRICS_CERTS}") from error
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports['health']}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {
                "port": self.ports["webhook"],
                "host": "127.0.0.1",
                "certDir": str(self.folder / "certs"),
            },
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "managedJobsNamespaceSelector": {"matchLabels": {OPT_IN: "true"}},
            "integrations": {"frameworks": ["batch/job"]},
        }
        config_path = self.folder / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(binary),
                f"--config={config_path}",
                f"--visibility-server-port={self.ports['visibility']}",
                "--feature-gates=VisibilityOnDemand=false",
                "--zap-log-level=2",
            ],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            kubeconfig=self.kubeconfig,
            stdin=yaml.safe_dump_all(_webhooks(self.ports["webhook"], ca)),
        )
        return self

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"kueue exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.ports['health']}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    ready = response.status == 200
                with socket.create_connection(("127.0.0.1", self.ports["webhook"]), timeout=2):
                    pass
                if ready:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"kueue not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Webhooks first (a dead webhook with failurePolicy Fail blocks Job creation), then the process."""
        kubectl(
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            WEBHOOKS,
            "--ignore-not-found",
            kubeconfig=self.kubeconfig,
            check=False,
        )
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
