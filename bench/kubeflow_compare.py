"""Our operator against Kubeflow Trainer v2's controller (with JobSet), the same workload on the same kwok cluster.

In one run, on the same fake 8-GPU kwok nodes, each round runs both arms one after the other (the order alternates
from round to round, so a machine that gets busier over the run does not always hurt the same arm):
- ours: N FineTuneJobs through `python -m finetune_operator` (a fresh process per arm, watching the arm's
  namespace, as bench/operator_scale.py runs it);
- kubeflow: N TrainJobs of a one-node, one-GPU ClusterTrainingRuntime through Trainer's controller manager and
  the JobSet controller (fresh processes per arm, cluster-wide; bench/kubeflow_local.py says how they run).
Each arm has its own namespace, deleted (and waited for) before the next arm starts. The pods are kwok's: each
runs `--delay` and succeeds.

The work differs, and the figures say so rather than hide it: a FineTuneJob runs a CPU-only data check Job first
(component `validator`), then the training Job, so it makes two Jobs and two pods (plus a ServiceAccount, Role,
RoleBinding, ConfigMap and Events) where a TrainJob makes a JobSet, one Job (and a headless Service) and one pod.
Ours' training pod cannot exist before its validation pod has run (`--delay` of kwok time), so "every training
pod exists" carries one `--delay` for ours that Kubeflow's has not; "every first pod exists" (ours: the
validation pod) is the like-for-like time from create to a running pod.

Figures per arm, medians over the rounds and each round's ratio Kubeflow / ours:
- seconds until every first pod, every training Job, every training pod exists, and every job is done
  (FineTuneJob Succeeded; TrainJob condition Complete), from the first create; propagation (training pod
  Succeeded -> done) p50/p99;
- API requests per job, each controller's own client count (ours: finetune_operator_api_requests_total;
  Trainer and JobSet: controller-runtime's rest_client_requests_total), reads and watches included;
- writes per job as the API server's audit log saw them in the arm's namespace, by client (the controllers,
  and the Job controller, scheduler and kwok they set to work): hack/cluster.sh logs every write;
- peak RSS of each controller process (Trainer and JobSet separately and summed), their CPU seconds, the
  cluster components' CPU seconds until every training pod existed, and the load average before the arm.

    hack/kubeflow-trainer.sh build        # once: both controllers from their Go modules (minutes, cold)
    python bench/kubeflow_compare.py [--jobs 500] [--nodes 100] [--rounds 3] [--delay 2s]
    python bench/kubeflow_compare.py --quick   # 10 jobs, 2 nodes, 1 round: does it work at all

Needs the local cluster (hack/cluster.sh up, or FTO_STATE_DIR naming a private one) for the audit log and the
component CPU figures. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.kubeflow_local import JOBSET_NAME_LABEL, TRAINER_API, LocalKubeflow, train_job  # noqa: E402
from bench.operator_scale import (  # noqa: E402
    GROUP,
    PLURAL,
    TOLERATION,
    TRAINER,
    VALIDATOR,
    VERSION,
    Watcher,
    api_requests,
    component_pids,
    cpu_seconds,
    create_nodes,
    delete_nodes,
    finetunejob,
    peak_rss_mib,
    percentile,
    process_tree_cpu_seconds,
    remove_stale_nodes,
    rss_mib,
    start_operator,
    wait_for_metrics,
)
from tests.support.audit import writes_by_client  # noqa: E402
from tests.support.cluster import kubeconfig_path  # noqa: E402
from tests.support.crds import install_crd  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

ARMS = ("ours", "kubeflow")
CONTROLLERS = {"ours": ("finetune-operator",), "kubeflow": ("trainer-controller-manager", "jobset")}
# the figures whose ratio (Kubeflow / ours) is printed; for each, lower is better
RATIO_KEYS = (
    "all_first_pods_seconds",
    "all_training_pods_seconds",
    "all_done_seconds",
    "api_requests_per_job",
    "controller_writes_per_job",
    "namespace_writes_per_job",
    "controller_peak_rss_mib",
    "controller_cpu_seconds",
)
GPUS_PER_NODE = 8


# --- pure arithmetic (tests/unit/test_kubeflow_compare_summary.py) ---


def elapsed(seen: dict[str, float], start: float, jobs: int) -> float | None:
    """Seconds from `start` until the last of `jobs` keys was seen; None when some were never seen (a timeout:
    no figure rather than a flattering one)."""
    if len(seen) < jobs:
        return None
    return round(max(seen.values(), default=start) - start, 2)


def earliest(*by_key: dict[str, float]) -> dict[str, float]:
    """Per key, the earliest time any of the dicts holds (a FineTuneJob's first pod is its validation pod)."""
    merged: dict[str, float] = {}
    for seen in by_key:
        for key, when in seen.items():
            merged[key] = min(when, merged.get(key, when))
    return merged


def timings(
    start: float,
    jobs: int,
    first_pods: dict[str, float],
    training_jobs: dict[str, float],
    training_pods: dict[str, float],
    training_done: dict[str, float],
    done: dict[str, float],
) -> dict[str, Any]:
    """An arm's time figures from what its watches saw (this process's monotonic clock), each keyed by job."""
    latencies = [done[key] - training_done[key] for key in done if key in training_done]
    return {
        "all_first_pods_seconds": elapsed(first_pods, start, jobs),
        "all_training_jobs_seconds": elapsed(training_jobs, start, jobs),
        "all_training_pods_seconds": elapsed(training_pods, start, jobs),
        "all_done_seconds": elapsed(done, start, jobs),
        "done": len(done),
        "propagation_p50_seconds": round(percentile(latencies, 0.5), 3),
        "propagation_p99_seconds": round(percentile(latencies, 0.99), 3),
    }


def per_job(counts: dict[str, float], jobs: int) -> dict[str, float]:
    return {name: round(value / jobs, 2) for name, value in sorted(counts.items())}


def median_and_range(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "values": values}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm, the median and range of every numeric figure; per round, the ratio Kubeflow / ours of each of
    RATIO_KEYS, and the median and range of those ratios. A figure missing from any round of an arm (a timeout)
    has no median: the rounds that finished would flatter it."""
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        figures = [r for r in rounds if r["arm"] == arm]
        keys = dict.fromkeys(k for f in figures for k, v in f.items() if isinstance(v, int | float) and k != "round")
        numeric = list(keys)
        arms[arm] = {}
        for key in numeric:
            values = [f[key] for f in figures]
            complete = all(isinstance(v, int | float) for v in values)
            arms[arm][key] = median_and_range(values) if complete else None
    ratios: dict[str, Any] = {}
    by_round = {(r["round"], r["arm"]): r for r in rounds}
    numbers = sorted({r["round"] for r in rounds})
    for key in RATIO_KEYS:
        values = []
        for number in numbers:
            ours, theirs = by_round.get((number, "ours")), by_round.get((number, "kubeflow"))
            if ours is None or theirs is None:
                continue
            a, b = ours.get(key), theirs.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and a > 0:
                values.append(round(b / a, 3))
        ratios[key] = median_and_range(values) if values and len(values) == len(numbers) else None
    return {"arms": arms, "ratios": ratios, "rounds": rounds}


def ratio_lines(summary: dict[str, Any]) -> list[str]:
    """One line per ratio: `key: 1.23x (1.10..1.40)`, or why there is none."""
    lines = []
    for key, ratio in summary["ratios"].items():
        if ratio is None:
            lines.append(f"{key:>28}: no ratio (an arm timed out, or ours measured 0)")
        else:
            lines.append(f"{key:>28}: {ratio['median']:.2f}x ({ratio['min']:.2f}..{ratio['max']:.2f})")
    return lines


# --- the cluster ---


class TrainJobWatcher(Watcher):
    """Operator_scale's Watcher for a TrainJob arm, keyed by TrainJob name (JobSet names its Jobs and pods with
    the label jobset.sigs.k8s.io/jobset-name = the TrainJob's name): the one Job and pod count as training."""

    def start(self) -> None:
        from kubernetes import client

        batch, core = client.BatchV1Api(self.api_client), client.CoreV1Api(self.api_client)
        custom = client.CustomObjectsApi(self.api_client)

        def on_job(job: dict[str, Any]) -> None:
            name = (job["metadata"].get("labels") or {}).get(JOBSET_NAME_LABEL)
            if name:
                self.job_seen[TRAINER].setdefault(name, time.monotonic())

        def on_pod(pod: dict[str, Any]) -> None:
            name = (pod["metadata"].get("labels") or {}).get(JOBSET_NAME_LABEL)
            if not name:
                return
            self.pod_seen[TRAINER].setdefault(name, time.monotonic())
            if (pod.get("status") or {}).get("phase") == "Succeeded":
                self.pod_done[TRAINER].setdefault(name, time.monotonic())

        def on_trainjob(obj: dict[str, Any]) -> None:
            conditions = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
                self.ftj_done.setdefault(obj["metadata"]["name"], time.monotonic())

        def trainjobs(namespace: str, **kw: Any) -> Any:
            return custom.list_namespaced_custom_object(*TRAINER_API, namespace, "trainjobs", **kw)

        for fn, handler, kw in (
            (batch.list_namespaced_job, on_job, {"label_selector": JOBSET_NAME_LABEL}),
            (core.list_namespaced_pod, on_pod, {"label_selector": JOBSET_NAME_LABEL}),
            (trainjobs, on_trainjob, {}),
        ):
            threading.Thread(target=self._loop, args=(fn, handler), kwargs=kw, daemon=True).start()


def pod_annotations(delay: str) -> dict[str, str]:
    """What kwok reads (hack/kwok/stages.yaml): the pod runs `delay`, then succeeds; the same for both arms."""
    return finetunejob("x", delay)["spec"]["podMetadata"]["annotations"]  # type: ignore[no-any-return]


def wait_until(done: Callable[[], bool], deadline: float, step: float = 0.2) -> None:
    while not done() and time.monotonic() < deadline:
        time.sleep(step)


def wait_namespace_gone(core: Any, namespace: str, timeout: float) -> float:
    """Seconds until the namespace (and so every pod and Job of the last arm) is gone: the next arm starts on a
    cluster that is not still deleting the last one's objects."""
    from kubernetes import client

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            core.read_namespace(namespace)
        except client.ApiException as error:
            if error.status == 404:
                return round(time.monotonic() - start, 1)
            raise
        time.sleep(1)
    print(f"warning: namespace {namespace} still there after {timeout:.0f}s", file=sys.stderr)
    return round(time.monotonic() - start, 1)


def create_all(create: Callable[[int], Any], jobs: int) -> float:
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(jobs)))
    return round(time.monotonic() - start, 2)


def audit_writes(namespace: str, since: datetime, jobs: int) -> dict[str, float] | None:
    """Writes per job into the arm's namespace by client, from the API server's audit log; None without one."""
    try:
        counts = writes_by_client(namespace, since, datetime.now(UTC) + timedelta(seconds=1))
    except AssertionError as error:  # no audit log: not the local cluster
        print(f"no audit log: {error}", file=sys.stderr)
        return None
    return per_job(dict(counts), jobs)


class Context:
    """What both arms share in one run: API clients, the kwok nodes, the installed Kubeflow, the options."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        from kubernetes import client, config

        self.args, self.folder = args, folder
        self.kubeconfig = kubeconfig_path()
        self.api_client = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        self.api_client.configuration.connection_pool_maxsize = 16
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.kubeflow = LocalKubeflow(self.api_client, self.kubeconfig, folder / "kubeflow")
        self.run_id = uuid.uuid4().hex[:6]
        self.nodes = [f"bench-kf-{self.run_id}-gpu-{i}" for i in range(args.nodes)]

    def namespace(self, arm: str, number: int) -> str:
        from kubernetes import client

        name = f"bench-{arm}-{self.run_id}-{number}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name


def common_figures(
    ctx: Context,
    arm: str,
    watcher: Watcher,
    start: float,
    since: datetime,
    namespace: str,
    controllers: dict[str, int],
    before: dict[str, Any],
    first_pods: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    """Wait for the arm to finish (or time out) and gather the figures both arms report alike."""
    jobs, deadline = ctx.args.jobs, start + ctx.args.timeout
    pods = watcher.pod_seen[TRAINER]
    wait_until(lambda: len(pods) >= jobs, deadline)
    cluster_cpu = {
        name: round(process_tree_cpu_seconds(pid) - before["cluster_cpu"][name], 1)
        for name, pid in before["cluster_pids"].items()
    }
    wait_until(lambda: len(watcher.ftj_done) >= jobs, deadline, 0.5)
    time.sleep(1)  # the last watch events
    figures = timings(
        start,
        jobs,
        first_pods(),
        watcher.job_seen[TRAINER],
        pods,
        watcher.pod_done[TRAINER],
        watcher.ftj_done,
    )
    writes = audit_writes(namespace, since, jobs)
    own = set(CONTROLLERS[arm])
    rss = {name: round(peak_rss_mib(pid), 1) for name, pid in controllers.items()}
    cpu = {name: round(cpu_seconds(pid) - before["cpu"][name], 1) for name, pid in controllers.items()}
    return {
        **figures,
        "pods_per_job": round(sum(len(s) for s in watcher.pod_seen.values()) / jobs, 2),
        "batch_jobs_per_job": round(sum(len(s) for s in watcher.job_seen.values()) / jobs, 2),
        "controller_writes_per_job": round(sum(v for k, v in writes.items() if k in own), 2) if writes else None,
        "namespace_writes_per_job": round(sum(writes.values()), 2) if writes else None,
        "writes_per_job_by_client": writes,
        "controller_peak_rss_mib": round(sum(rss.values()), 1),
        "peak_rss_mib_by_controller": rss,
        "controller_rss_before_mib": round(sum(before["rss"].values()), 1),
        "controller_cpu_seconds": round(sum(cpu.values()), 1),
        "cpu_seconds_by_controller": cpu,
        "cluster_cpu_seconds_until_all_training_pods": cluster_cpu,
    }


def snapshot(controllers: dict[str, int]) -> dict[str, Any]:
    pids = component_pids()
    return {
        "cpu": {name: cpu_seconds(pid) for name, pid in controllers.items()},
        "rss": {name: round(rss_mib(pid), 1) for name, pid in controllers.items()},
        "cluster_pids": pids,
        "cluster_cpu": {name: process_tree_cpu_seconds(pid) for name, pid in pids.items()},
    }


def run_ours(ctx: Context, number: int) -> dict[str, Any]:
    namespace = ctx.namespace("ours", number)
    metrics_port = free_port()
    log = (ctx.folder / f"operator-{number}.log").open("wb")
    operator = start_operator(ctx.kubeconfig, namespace, metrics_port, log)
    watcher = Watcher(ctx.api_client, namespace)
    try:
        watcher.start()
        wait_for_metrics(metrics_port, operator)
        load = os.getloadavg()[0]
        requests_before = api_requests(metrics_port)
        before = snapshot({"finetune-operator": operator.pid})
        since, start = datetime.now(UTC), time.monotonic()

        def create(i: int) -> Any:
            body = finetunejob(f"ftj-{i:04d}", ctx.args.delay)
            return ctx.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        created = create_all(create, ctx.args.jobs)
        figures = common_figures(
            ctx,
            "ours",
            watcher,
            start,
            since,
            namespace,
            {"finetune-operator": operator.pid},
            before,
            lambda: earliest(watcher.pod_seen[VALIDATOR], watcher.pod_seen[TRAINER]),
        )
        requests = api_requests(metrics_port) - requests_before
        return {
            "round": number,
            "arm": "ours",
            "jobs": ctx.args.jobs,
            "create_seconds": created,
            **figures,
            "api_requests_per_job": round(requests / ctx.args.jobs, 2),
            "api_requests_per_job_by_controller": {"finetune-operator": round(requests / ctx.args.jobs, 2)},
            "load_average_1m_before": round(load, 2),
        }
    finally:
        watcher.stop.set()
        operator.terminate()
        operator.wait(30)
        log.close()
        ctx.core.delete_namespace(namespace, propagation_policy="Background")


def run_kubeflow(ctx: Context, number: int) -> dict[str, Any]:
    namespace = ctx.namespace("kubeflow", number)
    kubeflow = ctx.kubeflow
    watcher = TrainJobWatcher(ctx.api_client, namespace)
    try:
        kubeflow.start()
        watcher.start()
        load = os.getloadavg()[0]
        controllers = {"trainer-controller-manager": kubeflow.pids()["trainer"], "jobset": kubeflow.pids()["jobset"]}
        requests_before = kubeflow.requests()
        before = snapshot(controllers)
        since, start = datetime.now(UTC), time.monotonic()

        def create(i: int) -> Any:
            return ctx.custom.create_namespaced_custom_object(
                *TRAINER_API, namespace, "trainjobs", train_job(f"tj-{i:04d}")
            )

        created = create_all(create, ctx.args.jobs)
        figures = common_figures(
            ctx,
            "kubeflow",
            watcher,
            start,
            since,
            namespace,
            controllers,
            before,
            lambda: dict(watcher.pod_seen[TRAINER]),
        )
        after = kubeflow.requests()
        requests = {
            "trainer-controller-manager": after["trainer"] - requests_before["trainer"],
            "jobset": after["jobset"] - requests_before["jobset"],
        }
        return {
            "round": number,
            "arm": "kubeflow",
            "jobs": ctx.args.jobs,
            "create_seconds": created,
            **figures,
            "api_requests_per_job": round(sum(requests.values()) / ctx.args.jobs, 2),
            "api_requests_per_job_by_controller": per_job(requests, ctx.args.jobs),
            "load_average_1m_before": round(load, 2),
        }
    finally:
        watcher.stop.set()
        kubeflow.stop()
        ctx.core.delete_namespace(namespace, propagation_policy="Background")


def print_round(figures: dict[str, Any]) -> None:
    print(f"--- round {figures['round']}, {figures['arm']}")
    for key, value in figures.items():
        if key not in ("round", "arm"):
            print(f"{key:>44}: {value}")


def print_summary(summary: dict[str, Any], delay: str) -> None:
    for arm, figures in summary["arms"].items():
        print(f"--- {arm}: median (range) over {len([r for r in summary['rounds'] if r['arm'] == arm])} rounds")
        for key, value in figures.items():
            shown = (
                "no figure (a round timed out)"
                if value is None
                else f"{value['median']} ({value['min']} - {value['max']})"
            )
            print(f"{key:>44}: {shown}")
    print("--- Kubeflow Trainer + JobSet / ours (per round, then the median; below 1: Kubeflow's is lower)")
    for line in ratio_lines(summary):
        print(line)
    print(
        f"note: ours runs two Jobs and two pods per job (the data check, then training); its training pods wait for "
        f"the validation pod's {delay} of kwok time, so all_training_pods_seconds carries that for ours alone"
    )


def run_all(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    if args.nodes * GPUS_PER_NODE < args.jobs:
        raise SystemExit(
            f"--nodes {args.nodes} x {GPUS_PER_NODE} GPUs cannot run --jobs {args.jobs} one-GPU pods at once"
        )
    ctx = Context(args, folder)
    install_crd(ctx.api_client, ROOT / "crds" / "finetunejob.yaml")
    remove_stale_nodes(ctx.core)
    create_nodes(ctx.core, ctx.nodes)
    rounds: list[dict[str, Any]] = []
    try:
        ctx.kubeflow.install(pod_annotations(args.delay), TOLERATION)
        ctx.kubeflow.stop()  # started to apply the runtime; each arm starts its own
        for number in range(1, args.rounds + 1):
            order: Iterable[str] = ARMS if number % 2 else reversed(ARMS)
            for arm in order:
                figures = (run_ours if arm == "ours" else run_kubeflow)(ctx, number)
                figures["namespace_deleted_seconds"] = wait_namespace_gone(
                    ctx.core, f"bench-{arm}-{ctx.run_id}-{number}", args.timeout
                )
                print_round(figures)
                rounds.append(figures)
    finally:
        with contextlib.suppress(Exception):
            ctx.kubeflow.uninstall()
        delete_nodes(ctx.core, ctx.nodes)
    return summarise(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, help="jobs per arm and round (default 500)")
    parser.add_argument("--nodes", type=int, help="fake 8-GPU kwok nodes, shared by both arms (default 100)")
    parser.add_argument("--rounds", type=int, help="rounds; each runs both arms, order alternating (default 3)")
    parser.add_argument("--delay", help="how long each fake pod runs, a Go duration, both arms (default 2s)")
    parser.add_argument("--timeout", type=float, help="seconds an arm may take (default 900)")
    parser.add_argument("--quick", action="store_true", help="10 jobs, 2 nodes, 1 round, 1s pods: a smoke run")
    args = parser.parse_args()
    sized = {"jobs": 500, "nodes": 100, "rounds": 3, "delay": "2s", "timeout": 900.0}
    if args.quick:
        given = [f"--{name}" for name in sized if getattr(args, name) is not None]
        if given:
            parser.error(f"--quick sets the size itself; drop {', '.join(given)} or --quick")
        sized = {"jobs": 10, "nodes": 2, "rounds": 1, "delay": "1s", "timeout": 300.0}
    for name, default in sized.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("jobs", "nodes", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not re.fullmatch(r"(\d+(\.\d+)?(ns|us|ms|s|m|h))+", args.delay):  # kwok would fall back to 1 s
        parser.error(f"--delay {args.delay!r} is not a Go duration such as 2s or 500ms")
    with tempfile.TemporaryDirectory(prefix="kubeflow-compare-") as tmp:
        folder = Path(os.environ.get("FTO_BENCH_LOGS", tmp))
        folder.mkdir(parents=True, exist_ok=True)
        print(f"logs of the controllers: {folder} (set FTO_BENCH_LOGS to keep them)")
        summary = run_all(args, folder)
    print_summary(summary, args.delay)
    print(json.dumps({"options": vars(args), **summary}, sort_keys=True))


if __name__ == "__main__":
    main()
