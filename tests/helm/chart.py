"""Helpers for the chart's tests: run helm/kubectl, render the chart, and act as the chart's ServiceAccount.

Why act as the ServiceAccount (TokenRequest, not the admin kubeconfig): the chart's RBAC is only proven by
requests that RBAC actually judges; an operator run with admin rights would hide every missing verb.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.kwok import KWOK_TOLERATION
from tests.support.portforward import port_forward

ROOT = Path(__file__).parents[2]
CHART = ROOT / "helm" / "finetune-operator"
TOOLS = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator")) / "bin" / "tools"


def tool(name: str) -> str:
    """helm/kubectl from PATH, else from hack/install-tools.sh's folder; a missing tool is a failure."""
    found = shutil.which(name) or (str(TOOLS / name) if (TOOLS / name).exists() else None)
    if not found:
        raise RuntimeError(f"{name} not found on PATH or in {TOOLS}: run `make cluster-up` (installs kubectl and helm)")
    return found


def promtool() -> str:
    """promtool, built from the Go module proxy when missing (hack/build-binaries.sh: several minutes cold on 2
    cores; CI builds it in the background and this waits for that build). A failed build fails the test."""
    subprocess.run([str(ROOT / "hack" / "build-binaries.sh"), "promtool"], check=True, timeout=1800)
    return tool("promtool")


def run(cmd: list[str], kubeconfig: Path | None = None, stdin: str | None = None, check: bool = True) -> Any:
    env = {**os.environ, **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {})}
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True) -> Any:
    return run([tool("helm"), *args], kubeconfig, check=check)


def kubectl(*args: str, kubeconfig: Path, stdin: str | None = None, check: bool = True) -> Any:
    return run([tool("kubectl"), *args], kubeconfig, stdin, check)


def set_args(values: dict[str, str] | None) -> list[str]:
    return [arg for key, value in (values or {}).items() for arg in ("--set", f"{key}={value}")]


def render(release: str, namespace: str, values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """`helm template` (chart templates only, not crds/) as parsed objects."""
    out = helm("template", release, str(CHART), "--namespace", namespace, *set_args(values)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def release_name() -> str:
    return "fto-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Identity:
    """A ServiceAccount's token, as a kubeconfig file (for processes) and a client (for requests)."""

    kubeconfig: Path
    api_client: Any
    username: str


def service_account_identity(cluster: Any, namespace: str, name: str, folder: Path) -> Identity:
    """A bound token from the TokenRequest API for `namespace/name`, exactly what a pod of it would get."""
    from kubernetes import client, config

    token = cluster.core.create_namespaced_service_account_token(
        name,
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)),
    ).status.token
    admin = cluster.api_client.configuration
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": admin.host, "certificate-authority": admin.ssl_ca_cert}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": name, "namespace": namespace}}],
        "current-context": "sa",
    }
    path = folder / f"{namespace}-{name}.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    api_client = config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
    return Identity(path, api_client, f"system:serviceaccount:{namespace}:{name}")


def status_of(error: Any) -> int:
    return int(getattr(error, "status", 0) or 0)


@contextmanager
def install_in_cluster(cluster: Any, namespace: str, operator_image: str, *extra: str) -> Iterator[str]:
    """The chart installed with the operator running as a pod (image `operator_image`, already on the real node)
    watching only `namespace`, under PodSecurity `restricted`; `extra`: more helm arguments. Yields the release
    name; uninstalled on exit."""
    labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn")}
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": labels}})
    release = release_name()
    repository, tag = operator_image.rsplit(":", 1)
    helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "logFormat=json",
        "--set",
        "reconcile.secretRecheckSeconds=1",
        # ftj_manifest's jobs use no credentials Secret and tolerate kwok's taint: the chart's policy refuses
        # both unless the admin allows them
        "--set",
        "policy.allowNodeIdentity=true",
        "--set-json",
        f"policy.allowedTolerations=[{json.dumps(KWOK_TOLERATION)}]",
        *extra,
        "--wait",
        "--timeout",
        "3m",
        kubeconfig=cluster.kubeconfig,
    )
    try:
        yield release
    finally:
        helm("uninstall", release, "-n", namespace, "--ignore-not-found", "--wait", kubeconfig=cluster.kubeconfig)


def release_pods(cluster: Any, namespace: str, release: str) -> list[Any]:
    """The operator pods of `release` (terminating ones included)."""
    items: list[Any] = cluster.core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={release}"
    ).items
    return items


def lease_holder(cluster: Any, namespace: str, lease: str) -> str:
    """The pod holding the leader-election Lease (the operator's identity is `<pod>_<random suffix>`); "" when
    there is no Lease yet."""
    from kubernetes import client

    try:
        spec = client.CoordinationV1Api(cluster.api_client).read_namespaced_lease(lease, namespace).spec
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str(spec.holder_identity or "").rsplit("_", 1)[0]


def scrape_operator_metrics(cluster: Any, namespace: str, target: str) -> str:
    """The text of an operator pod's /metrics (`target`: `pod/<name>`), through port-forward (no kube-proxy on
    the real node); retried for 30 s while the forward comes up."""
    with port_forward(cluster.kubeconfig, namespace, target, 9090) as port:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return str(response.read().decode())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
