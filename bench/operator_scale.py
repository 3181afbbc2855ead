"""Operator scale benchmark: N FineTuneJobs on M fake 8-GPU kwok nodes.

Reports: seconds until every training Job exists, status propagation latency (training pod Succeeded -> the
FineTuneJob's phase Succeeded, both seen by this script's own watches, so watch lag cancels out) p50/p99,
the operator's peak RSS, and Kubernetes API requests the operator sent per FineTuneJob (its own counter).
Targets at N=500, M=100 on a 2-core machine: all Jobs within 60 s, p99 under 5 s, RSS under 300 MiB.

Each FineTuneJob runs the CPU-only data check first (component `validator`: a bare pod the operator makes, or a
Job under Kueue), then, once it has passed, the training Job (component `trainer`). Both pods carry the
FineTuneJob's uid label, so the figures keep them apart by the component label: propagation starts when the
*training* pod succeeds (counting from the validation pod's end would add the whole training pod's run to it),
and the hand-over (validation pod done -> training Job exists) is reported on its own, as is the time until every
data check's pod exists (`all_check_pods_seconds`: its pod, not its Job, so the figure means the same whether the
check is a pod or a Job, and includes the Job controller's part when it is a Job).

The machine is shared and noisy, so the benchmark runs several rounds (--runs, each with a fresh operator,
namespace and nodes) and reports the median of each figure beside its range. A round ends once its namespace is
gone, and the next starts once the 1-minute load average is under --quiet-load (1.0; at most 240 s of waiting):
a round started while the last one's deletions still ran was measured 20-40% slower. On the local cluster it also
reports the CPU seconds each component spent until the last Job existed, and the load average before the
round started: the operator, the API server, etcd and the controllers share two cores, and those figures
say which of them the wall time went to (and whether something else was loading the machine).

    python bench/operator_scale.py [--jobs 500] [--nodes 100] [--runs 3]  # needs `make cluster-up` or $KUBECONFIG
    python bench/operator_scale.py --jobs 10000 --nodes 500 --runs 1 --timeout 3600 --release

With --release each round then deletes every FineTuneJob and reports the operator's resident memory once it
tracks none, beside the baseline read before the first create and the peak.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import is_local_cluster, kubeconfig_path, state_dir  # noqa: E402
from tests.support.crds import install_crd  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
NODE_LABEL = "finetune.dev/bench-node"
COMPONENT_LABEL, TRAINER, VALIDATOR = "finetune.dev/component", "trainer", "validator"
UID_LABEL = "finetune.dev/job-uid"
TARGETS = {"all_child_jobs_seconds": 60.0, "propagation_p99_seconds": 5.0, "operator_peak_rss_mib": 300.0}
CLUSTER_COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok")


def node(name: str) -> dict[str, Any]:
    capacity = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "2Ti", "pods": "110", "nvidia.com/gpu": "8"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", NODE_LABEL: "true", "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def finetunejob(name: str, delay: str) -> dict[str, Any]:
    message = json.dumps({"code": "Succeeded", "message": "bench", "metrics": {"test": {"loss": 1.0}}})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny/"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "text"},
            "resources": {"gpus": 1, "memory": "1Gi", "cpu": "1", "tolerations": [TOLERATION]},
            "output": {"uri": f"s3://artifacts/{name}/"},
            "podMetadata": {
                "annotations": {
                    "kwok.finetune.dev/exit-code": "0",
                    "kwok.finetune.dev/termination-message": message,
                    "kwok.finetune.dev/delay": delay,
                }
            },
        },
    }


class Watcher:
    """Records, with this process's clock, when each Job appears, each pod succeeds, each FTJ succeeds.

    The watches must cost the machine little, since the operator and the API server are what is measured:
    events stay raw JSON (no client model objects) and a watch that times out resumes from the last
    resourceVersion seen rather than listing everything again."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self.api_client, self.namespace = api_client, namespace
        self.job_seen: dict[str, dict[str, float]] = {TRAINER: {}, VALIDATOR: {}}  # component -> uid -> seen
        self.pod_seen: dict[str, dict[str, float]] = {TRAINER: {}, VALIDATOR: {}}  # component -> uid -> seen
        self.pod_done: dict[str, dict[str, float]] = {TRAINER: {}, VALIDATOR: {}}  # component -> uid -> done
        self.ftj_done: dict[str, float] = {}  # by FineTuneJob uid
        self.stop = threading.Event()

    def _loop(self, list_fn: Any, on_event: Any, **kwargs: Any) -> None:
        from kubernetes import watch

        resource_version = ""
        while not self.stop.is_set():
            resume = {"resource_version": resource_version} if resource_version else {}
            try:
                for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
                    list_fn, self.namespace, timeout_seconds=60, deserialize=False, **resume, **kwargs
                ):
                    if event["type"] == "ERROR":  # 410 Gone: too old to resume; start over (setdefault is idempotent)
                        resource_version = ""
                        break
                    resource_version = event["object"]["metadata"].get("resourceVersion", resource_version)
                    on_event(event["object"])
            except Exception as error:  # a dropped watch is restarted; the bench must not die of it
                print(f"watch restarted: {error}", file=sys.stderr)
                resource_version = ""
                time.sleep(0.5)

    def start(self) -> None:
        from kubernetes import client

        batch, core = client.BatchV1Api(self.api_client), client.CoreV1Api(self.api_client)
        custom = client.CustomObjectsApi(self.api_client)

        def on_job(job: dict[str, Any]) -> None:
            labels = job["metadata"].get("labels") or {}
            seen = self.job_seen.get(labels.get(COMPONENT_LABEL, ""))
            if seen is not None and labels.get(UID_LABEL):
                seen.setdefault(labels[UID_LABEL], time.monotonic())

        def on_pod(pod: dict[str, Any]) -> None:
            labels = pod["metadata"].get("labels") or {}
            component, uid = labels.get(COMPONENT_LABEL, ""), labels.get(UID_LABEL)
            if component not in self.pod_done or not uid:
                return
            self.pod_seen[component].setdefault(uid, time.monotonic())
            if (pod.get("status") or {}).get("phase") == "Succeeded":
                self.pod_done[component].setdefault(uid, time.monotonic())

        def on_ftj(obj: dict[str, Any]) -> None:
            if (obj.get("status") or {}).get("phase") == "Succeeded":
                self.ftj_done.setdefault(obj["metadata"]["uid"], time.monotonic())

        def custom_list(namespace: str, **kw: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw)

        for fn, handler, kw in (
            (batch.list_namespaced_job, on_job, {}),
            (core.list_namespaced_pod, on_pod, {"label_selector": UID_LABEL}),
            (custom_list, on_ftj, {}),
        ):
            threading.Thread(target=self._loop, args=(fn, handler), kwargs=kw, daemon=True).start()


def create_nodes(core: Any, names: list[str]) -> None:
    """The fake 8-GPU nodes, eight creates at a time."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: core.create_node(node(name)), names))


def delete_nodes(core: Any, names: list[str]) -> None:
    from kubernetes import client

    for name in names:
        with contextlib.suppress(client.ApiException):
            core.delete_node(name)


def start_operator(kubeconfig: Path, namespace: str, metrics_port: int, log: Any) -> subprocess.Popen[bytes]:
    """`python -m finetune_operator` from this checkout, watching only `namespace`, its output into `log`."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finetune_operator",
            "-n",
            namespace,
            "--metrics-port",
            str(metrics_port),
            "--health-port",
            "0",
            "--trainer-image",
            "registry.local/finetune-trainer:bench",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def remove_stale_nodes(core: Any) -> None:
    """Fake nodes a crashed earlier run left behind (they carry NODE_LABEL)."""
    for stale in core.list_node(label_selector=NODE_LABEL).items:
        core.delete_node(stale.metadata.name)


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    """Resident memory now (not the peak): what the release figure compares with the baseline."""
    return _status_mib(pid, "VmRSS")


def jobs_remembered(port: int) -> float:
    """FineTuneJobs the operator still tracks (the sum of `finetune_operator_finetunejobs` over phases)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    prefix = "finetune_operator_finetunejobs{"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def release(custom: Any, namespace: str, port: int, pid: int, timeout: float) -> dict[str, Any]:
    """Delete every FineTuneJob, wait until the operator tracks none, and read its resident memory then: the
    operator keeps one store entry per object it watches and drops them as the deletions arrive, so after a mass
    deletion its memory should come back near the baseline taken before the first create. CPython keeps freed
    small objects in its own arenas, so the figure alone does not tell retention from a leak: a leak grows with
    the number of jobs, retention stays near the peak of the largest round."""
    from kubernetes.client.exceptions import ApiException

    start = time.monotonic()
    try:
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    except ApiException as error:
        # at 10,000 FineTuneJobs the call outlives the API server's 60 s request timeout (504) while the
        # deletion goes on server-side: the wait below is what tells when it is done
        if error.status != 504:
            raise
    remaining = jobs_remembered(port)
    while remaining > 0 and time.monotonic() - start < timeout:
        time.sleep(2)
        remaining = jobs_remembered(port)
    forgotten = time.monotonic() - start
    time.sleep(30)  # the children's deletions arrive and the store drops their entries
    return {
        "release_seconds": round(forgotten, 1) if remaining == 0 else None,
        "jobs_tracked_after_delete": remaining,
        "operator_rss_after_delete_mib": round(rss_mib(pid), 1),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def component_pids() -> dict[str, int]:
    """PIDs of the local cluster's control plane (from `make cluster-up`'s state folder); {} elsewhere."""
    if not is_local_cluster(kubeconfig_path()):
        return {}
    found = {}
    for name in CLUSTER_COMPONENTS:
        pid_file = state_dir() / "pids" / f"{name}.pid"
        if pid_file.exists() and Path(f"/proc/{pid_file.read_text().strip()}").exists():
            found[name] = int(pid_file.read_text().strip())
    return found


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (kwok and the S3 server run under a wrapper shell)."""
    total = 0.0
    with contextlib.suppress(OSError):
        total += cpu_seconds(pid)
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += process_tree_cpu_seconds(int(child))
    return total


def api_requests_by_verb(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    prefix = 'finetune_operator_api_requests_total{verb="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def wait_for_metrics(port: int, operator: subprocess.Popen[bytes], patience: float = 120.0) -> None:
    """Until the operator answers on its metrics port: its start (imports, first lists) takes seconds on a
    quiet machine and far longer on a loaded one, so a fixed pause measured nothing or failed."""
    deadline = time.monotonic() + patience
    while True:
        try:
            api_requests_by_verb(port)
            return
        except OSError:
            if operator.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def api_requests(port: int) -> float:
    return sum(api_requests_by_verb(port).values())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Round:
    """One measured round's namespace and the operator watching it."""

    namespace: str
    metrics_port: int
    operator: subprocess.Popen[bytes]


@contextlib.contextmanager
def operator_round(core: Any, kubeconfig: Path, prefix: str, nodes: int, timeout: float) -> Iterator[Round]:
    """A fresh namespace `<prefix>-<id>`, `nodes` fake nodes and this checkout's operator watching the namespace
    (its output in $TMPDIR/<prefix>-<id>.log). On the way out the operator stops and the namespace and nodes are
    deleted, waiting until the namespace is gone, so the next round does not share the machine with this one's
    cleanup. Every scale benchmark's round (this one's, bench/sweep_scale.py's) runs inside one."""
    from kubernetes import client

    remove_stale_nodes(core)
    run_id = uuid.uuid4().hex[:6]
    namespace = f"{prefix}-{run_id}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    node_names = [f"bench-{run_id}-gpu-{i}" for i in range(nodes)]
    metrics_port = free_port()
    with open(Path(os.environ.get("TMPDIR", "/tmp")) / f"{namespace}.log", "wb") as log:
        operator = start_operator(kubeconfig, namespace, metrics_port, log)
        try:
            create_nodes(core, node_names)
            yield Round(namespace, metrics_port, operator)
        finally:
            operator.terminate()
            operator.wait(30)
            core.delete_namespace(namespace, propagation_policy="Background")
            delete_nodes(core, node_names)
            wait_until_gone(core, namespace, timeout)


def run(jobs: int, nodes: int, delay: str, timeout: float, measure_release: bool = False) -> dict[str, Any]:
    from kubernetes import client, config

    kubeconfig = kubeconfig_path()
    api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    api_client.configuration.connection_pool_maxsize = 16
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    install_crd(api_client, ROOT / "crds" / "finetunejob.yaml")
    with operator_round(core, kubeconfig, "bench", nodes, timeout) as bench_round:
        watcher = Watcher(api_client, bench_round.namespace)
        watcher.start()
        try:
            return _measure(custom, watcher, bench_round, jobs, nodes, delay, timeout, measure_release)
        finally:
            watcher.stop.set()


def _measure(
    custom: Any,
    watcher: Watcher,
    bench_round: Round,
    jobs: int,
    nodes: int,
    delay: str,
    timeout: float,
    measure_release: bool,
) -> dict[str, Any]:
    """One round's figures: the operator already watches the round's namespace, the nodes exist."""
    namespace, metrics_port, operator = bench_round.namespace, bench_round.metrics_port, bench_round.operator
    wait_for_metrics(metrics_port, operator)  # operator startup (imports, first list)
    load_before = os.getloadavg()[0]
    baseline_rss = rss_mib(operator.pid)
    before = api_requests(metrics_port)
    cpu_before = cpu_seconds(operator.pid)
    # the operator is this process's child: the benchmark's own figure is its process alone, not its tree
    readers: dict[str, Callable[[], float]] = {
        "operator": lambda: process_tree_cpu_seconds(operator.pid),
        "benchmark (creates, watches)": lambda: cpu_seconds(os.getpid()),
        **{name: partial(process_tree_cpu_seconds, pid) for name, pid in component_pids().items()},
    }
    component_cpu_before = {name: read() for name, read in readers.items()}
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, finetunejob(f"ftj-{i:04d}", delay)
                ),
                range(jobs),
            )
        )
    created = time.monotonic() - start
    deadline = start + timeout
    trainers, validators = watcher.job_seen[TRAINER], watcher.job_seen[VALIDATOR]
    while len(trainers) < jobs and time.monotonic() < deadline:
        time.sleep(0.2)
    all_jobs = max(trainers.values(), default=start) - start if len(trainers) >= jobs else None
    all_validators = max(validators.values(), default=start) - start if len(validators) >= jobs else None
    checks = watcher.pod_seen[VALIDATOR]
    all_checks = max(checks.values(), default=start) - start if len(checks) >= jobs else None
    component_cpu = {name: round(read() - component_cpu_before[name], 1) for name, read in readers.items()}
    while len(watcher.ftj_done) < jobs and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    trained, checked = watcher.pod_done[TRAINER], watcher.pod_done[VALIDATOR]
    latencies = [watcher.ftj_done[uid] - trained[uid] for uid in watcher.ftj_done if uid in trained]
    handovers = [trainers[uid] - checked[uid] for uid in trainers if uid in checked]
    requests = api_requests(metrics_port) - before
    cpu = cpu_seconds(operator.pid) - cpu_before
    peak = peak_rss_mib(operator.pid)
    figures = {
        "jobs": jobs,
        "nodes": nodes,
        "gpus_per_node": 8,
        "create_seconds": round(created, 2),
        "all_child_jobs_seconds": round(all_jobs, 2) if all_jobs is not None else None,
        "all_check_pods_seconds": round(all_checks, 2) if all_checks is not None else None,
        "all_validation_jobs_seconds": round(all_validators, 2) if all_validators is not None else None,
        "training_jobs_seen": len(trainers),
        "validation_jobs_seen": len(validators),  # 0 when the checks are bare pods (no Kueue queue)
        "check_pods_seen": len(checks),
        "succeeded": len(watcher.ftj_done),
        "handover_p50_seconds": round(percentile(handovers, 0.5), 3),
        "handover_p99_seconds": round(percentile(handovers, 0.99), 3),
        "propagation_p50_seconds": round(percentile(latencies, 0.5), 3),
        "propagation_p99_seconds": round(percentile(latencies, 0.99), 3),
        "propagation_mean_seconds": round(statistics.fmean(latencies), 3) if latencies else None,
        "operator_baseline_rss_mib": round(baseline_rss, 1),
        "operator_peak_rss_mib": round(peak, 1),
        "api_requests_per_job": round(requests / jobs, 2),
        "api_requests_by_verb": api_requests_by_verb(metrics_port),
        "operator_cpu_seconds": round(cpu, 1),
        "operator_cpu_ms_per_job": round(1000 * cpu / jobs, 1),
        "cpu_seconds_until_all_jobs": component_cpu,
        "load_average_1m_before": round(load_before, 1),
    }
    # printed before the release: a 10,000-job round is most of an hour, and a failure while deleting must
    # not take its figures with it
    print(json.dumps({"measured_before_release": figures}), flush=True)
    if measure_release:
        figures.update(release(custom, namespace, metrics_port, operator.pid, timeout))
    return figures


def wait_until_gone(core: Any, namespace: str, timeout: float) -> None:
    """The next round must not share the machine with this one's cleanup (thousands of deletions by the
    namespace controller and the garbage collector): wait until the namespace is gone."""
    from kubernetes import client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except client.ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(2)
    print(f"namespace {namespace} still there after {timeout:.0f} s", file=sys.stderr)


def wait_for_quiet(limit: float, most: float = 240.0) -> float:
    """Wait (at most `most` seconds) until the 1-minute load average is under `limit`; the load it reached. A round
    that starts while the last one's work still loads the machine measures the two together."""
    deadline = time.monotonic() + most
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the rounds, its range, and each target met or missed."""
    summary: dict[str, Any] = {"runs": len(rounds), "jobs": rounds[0]["jobs"], "nodes": rounds[0]["nodes"]}
    for key, value in rounds[0].items():
        if isinstance(value, int | float) and key not in ("jobs", "nodes", "gpus_per_node"):
            values = [r[key] for r in rounds if isinstance(r[key], int | float)]
            if len(values) < len(rounds):  # a round that timed out has no figure: the median would flatter
                summary[key] = None
                continue
            summary[key] = round(statistics.median(values), 3)
            summary[f"{key}_range"] = [min(values), max(values)]
    components = rounds[0].get("cpu_seconds_until_all_jobs") or {}
    summary["cpu_seconds_until_all_jobs"] = {
        name: statistics.median(r["cpu_seconds_until_all_jobs"].get(name, 0.0) for r in rounds) for name in components
    }
    summary["targets"] = {
        key: {"target": limit, "median": summary[key], "met": summary[key] is not None and summary[key] < limit}
        for key, limit in TARGETS.items()
    }
    summary["rounds"] = rounds
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="rounds; figures are medians over them")
    parser.add_argument("--delay", default="20s", help="how long each fake training pod runs (Go duration)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--release",
        action="store_true",
        help="after each round, delete every FineTuneJob and report the operator's resident memory once it tracks none",
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=1.0,
        help="before each round wait (up to 240 s) until the 1-minute load average is under this; 0: do not wait",
    )
    args = parser.parse_args()
    rounds = []
    for index in range(args.runs):
        if args.quiet_load > 0:
            print(f"--- load average {wait_for_quiet(args.quiet_load):.1f} before round {index + 1}", flush=True)
        figures = run(args.jobs, args.nodes, args.delay, args.timeout, args.release)
        print(f"--- round {index + 1}/{args.runs}")
        for key, value in figures.items():
            print(f"{key:>28}: {value}")
        rounds.append(figures)
    summary = summarise(rounds)
    print(f"--- median of {args.runs} rounds")
    for key, value in summary.items():
        if key not in ("rounds", "targets") and not key.endswith("_range"):
            spread = summary.get(f"{key}_range")
            print(f"{key:>28}: {value}" + (f"  (range {spread[0]} - {spread[1]})" if spread else ""))
    for key, verdict in summary["targets"].items():
        print(f"{'target':>28}: {key} < {verdict['target']}: {'met' if verdict['met'] else 'MISSED'}")
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
