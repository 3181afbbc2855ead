"""OpenAI fine-tuning API benchmark: list and retrieve latency with N jobs in a namespace and C concurrent clients.

What a user of the API does most is poll: `client.fine_tuning.jobs.list()` and `.retrieve(id)`. This measures
both through the real service (`python -m finetune_trainer.finetuning_api`, one replica as its own process, its
own ServiceAccount-free admin kubeconfig for TokenReview and impersonation) against the local cluster's real
kube-apiserver, with a ServiceAccount token of a tenant namespace holding N FineTuneJobs made the way the API makes
them (one created through `POST /v1/fine_tuning/jobs`, the rest copies of it under new names). Beside it, in the
same run and with the same token and concurrency, the floor a user could pick instead: the same list and get sent
straight to the kube-apiserver (what `kubectl get ftj` does), so the ratio says what the API layer costs.

Reports p50/p99 of each, requests per second, the API process's peak RSS, and the load average before and after.

    python bench/finetuning_api.py [--jobs 1000] [--clients 50] [--seconds 20]  # needs `make cluster-up`

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import kubeconfig_path, load_env_file  # noqa: E402
from tests.support.crds import install_crd  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

sys.path.insert(0, str(ROOT / "trainer-image"))
from finetune_trainer.finetuning_api.jobs import new_job_name  # noqa: E402

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
SECRET = "finetune-storage"
CHAT = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}).encode()
    + b"\n"
    for i in range(16)
)
CATALOG = "models:\n- name: smollm2-135m\n  baseModel: s3://models/smollm2-135m-instruct/\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tenant(core: Any, rbac: Any, namespace: str, env: dict[str, str]) -> str:
    """A namespace with the storage Secret, a ServiceAccount with the Role docs/openai-api.md gives a tenant, and
    its token."""
    from kubernetes import client

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=SECRET),
            string_data={
                "AWS_ACCESS_KEY_ID": env["FTO_S3_ACCESS_KEY"],
                "AWS_SECRET_ACCESS_KEY": env["FTO_S3_SECRET_KEY"],
            },
        ),
    )
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="u")))
    rules = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "u"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "u"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "u"},
            "subjects": [{"kind": "ServiceAccount", "name": "u", "namespace": namespace}],
        },
    )
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    return str(core.create_namespaced_service_account_token("u", namespace, request).status.token)


def start_api(kubeconfig: Path, env: dict[str, str], bucket: str, catalog: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    variables = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'trainer-image'}:{ROOT / 'operator'}",
        "FTO_API_BUCKET": bucket,
        "FTO_API_S3_ENDPOINT": env["FTO_S3_ENDPOINT"],
        "FTO_API_CATALOG": str(catalog),
        "FTO_API_KUBECONFIG": str(kubeconfig),
        "FTO_API_HOST": "127.0.0.1",
        "FTO_API_LISTEN_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer.finetuning_api"],
        env=variables,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the API did not start within 60 s")


def hammer(make_request: Any, ids: list[str], clients: int, seconds: float, verify: Any = True) -> dict[str, Any]:
    """One arm: `clients` threads, each with its own connection, alternating list and retrieve for `seconds`."""
    latencies: dict[str, list[float]] = {"list": [], "retrieve": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        with httpx.Client(timeout=60, verify=verify) as session:
            n = index
            while time.monotonic() < stop_at:
                kind = "list" if n % 2 == 0 else "retrieve"
                started = time.perf_counter()
                response = make_request(session, kind, ids[n % len(ids)])
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies[kind].append(elapsed)
                    else:
                        errors.append(f"{kind} {response.status_code}: {response.text[:200]}")
                n += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    out: dict[str, Any] = {"errors": len(errors), "first_errors": errors[:3]}
    for kind, values in latencies.items():
        out[kind] = {
            "requests": len(values),
            "p50_ms": round(percentile(values, 0.5) * 1000, 1) if values else None,
            "p99_ms": round(percentile(values, 0.99) * 1000, 1) if values else None,
            "per_second": round(len(values) / seconds, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    import boto3
    from kubernetes import client, config

    kubeconfig = kubeconfig_path()
    env = load_env_file()
    api_client = config.new_client_from_config(str(kubeconfig))
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    install_crd(api_client, ROOT / "crds" / "finetunejob.yaml")
    bucket = f"bench-files-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=env["FTO_S3_ENDPOINT"],
        aws_access_key_id=env["FTO_S3_ACCESS_KEY"],
        aws_secret_access_key=env["FTO_S3_SECRET_KEY"],
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    namespace = f"bench-api-{uuid.uuid4().hex[:6]}"
    token = tenant(core, rbac, namespace, env)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "models.yaml"
        catalog.write_text(CATALOG)
        process, url = start_api(kubeconfig, env, bucket, catalog)
        try:
            auth = {"Authorization": f"Bearer {token}"}
            uploaded = httpx.post(
                url + "/v1/files",
                headers=auth,
                files={"file": ("train.jsonl", CHAT)},
                data={"purpose": "fine-tune"},
                timeout=60,
            )
            uploaded.raise_for_status()
            created = httpx.post(
                url + "/v1/fine_tuning/jobs",
                headers=auth,
                json={"model": "smollm2-135m", "training_file": uploaded.json()["id"]},
                timeout=60,
            )
            created.raise_for_status()
            first = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, created.json()["id"])
            template = {k: first[k] for k in ("apiVersion", "kind", "spec")}
            meta = first["metadata"]
            started = time.monotonic()

            def copy(index: int) -> str:
                name = new_job_name()  # the API's own ids (`ftjob-` + 20 base32 characters)
                body = {
                    **template,
                    "metadata": {"name": name, "labels": meta.get("labels"), "annotations": meta.get("annotations")},
                }
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
                return name

            with ThreadPoolExecutor(16) as pool:
                ids = [created.json()["id"], *pool.map(copy, range(args.jobs - 1))]
            made_seconds = time.monotonic() - started

            def through_api(session: httpx.Client, kind: str, job_id: str) -> httpx.Response:
                if kind == "list":
                    return session.get(url + "/v1/fine_tuning/jobs", headers=auth, params={"limit": 20})
                return session.get(f"{url}/v1/fine_tuning/jobs/{job_id}", headers=auth)

            server = api_client.configuration.host
            ca = api_client.configuration.ssl_ca_cert

            def direct(session: httpx.Client, kind: str, job_id: str) -> httpx.Response:
                base = f"{server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
                if kind == "list":  # what the API must read for a list (its label), whole, as kubectl would
                    return session.get(base, headers=auth, params={"labelSelector": "api.finetune.dev/job=openai"})
                return session.get(f"{base}/{job_id}", headers=auth)

            results: dict[str, Any] = {}
            for arm, send in (("api", through_api), ("kube-apiserver", direct), ("api again", through_api)):
                verify = ca if arm == "kube-apiserver" else True
                results[arm] = hammer(send, ids, args.clients, args.seconds, verify)
                print(arm, json.dumps(results[arm]), flush=True)
            rss = peak_rss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    core.delete_namespace(namespace)
    api_arms = [results["api"], results["api again"]]
    summary = {
        "jobs": args.jobs,
        "clients": args.clients,
        "seconds_per_arm": args.seconds,
        "jobs_created_seconds": round(made_seconds, 1),
        "arms": results,
        "list_p50_ms_api": statistics.median(a["list"]["p50_ms"] for a in api_arms),
        "list_p99_ms_api": statistics.median(a["list"]["p99_ms"] for a in api_arms),
        "retrieve_p50_ms_api": statistics.median(a["retrieve"]["p50_ms"] for a in api_arms),
        "retrieve_p99_ms_api": statistics.median(a["retrieve"]["p99_ms"] for a in api_arms),
        "api_peak_rss_mib": round(rss, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    direct_arm = results["kube-apiserver"]
    for kind in ("list", "retrieve"):
        if direct_arm[kind]["p50_ms"]:
            summary[f"{kind}_p50_ratio_api_over_direct"] = round(
                summary[f"{kind}_p50_ms_api"] / direct_arm[kind]["p50_ms"], 2
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
