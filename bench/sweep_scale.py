"""Sweep scale benchmark: one FineTuneSweep of N trials (1,000 by default, the most a sweep runs) on fake kwok nodes.

Reports: seconds until every trial exists and until the sweep is `Succeeded` with its winner, trials finished per
minute, the most trials unfinished at one time (never above `parallelism`), the sweep's status size at the end
(bytes: the status is one object, and etcd refuses one over its 1.5 MiB request limit whole), the operator's peak
RSS, and the API requests and CPU it spent per trial.

Each trial is a FineTuneJob like any other: kwok runs its data check's pod and then its training pod, each for
--delay, and both end with the template's scripted termination message, whose metrics give every trial the same
validation loss; so the winner is known in advance (ties go to the lower index: trial 0) and checked. The
figures are of the sweep's own machinery (creating trials within `parallelism`, following 1,000 of them,
rewriting one large status), not of training.

    python bench/sweep_scale.py [--trials 1000] [--parallelism 64] [--nodes 16]  # needs `make cluster-up`

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.operator_scale import (  # noqa: E402
    GROUP,
    PLURAL,
    TOLERATION,
    Round,
    Watcher,
    api_requests,
    cpu_seconds,
    operator_round,
    peak_rss_mib,
    wait_for_metrics,
    wait_for_quiet,
)
from tests.support.cluster import kubeconfig_path  # noqa: E402
from tests.support.crds import install_crd  # noqa: E402

VERSION, SWEEPS = "v1alpha1", "finetunesweeps"
ETCD_REQUEST_LIMIT = 1536 * 1024
FINISHED = ("Succeeded", "Failed", "Serving", "Publishing")  # a trial the sweep counts as finished


def sweep(name: str, trials: int, parallelism: int, delay: str) -> dict[str, Any]:
    """A random search over the learning rate; every trial's pods end after `delay` with the same metrics."""
    message = json.dumps(
        {"code": "Succeeded", "message": "bench", "metrics": {"validation": {"loss": 1.0}, "test": {"loss": 1.0}}}
    )
    template = {
        "baseModel": {"uri": "s3://models/tiny/"},
        "dataset": {
            "train": {"uri": "s3://data/train.jsonl"},
            "validation": {"uri": "s3://data/validation.jsonl"},
            "schema": "text",
        },
        "resources": {"gpus": 1, "memory": "1Gi", "cpu": "1", "tolerations": [TOLERATION]},
        "output": {"uri": f"s3://artifacts/{name}/"},
        "podMetadata": {
            "annotations": {
                "kwok.finetune.dev/exit-code": "0",
                "kwok.finetune.dev/termination-message": message,
                "kwok.finetune.dev/delay": delay,
            }
        },
    }
    parameters = [{"path": "hyperparameters.learningRate", "range": {"min": 1e-6, "max": 1e-3, "scale": "log"}}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneSweep",
        "metadata": {"name": name},
        "spec": {
            "template": template,
            "parameters": parameters,
            "algorithm": "random",
            "maxTrials": trials,
            "parallelism": parallelism,
        },
    }


class TrialWatcher(Watcher):
    """operator_scale's Watcher (its resumable raw watch) on the trials alone: when each FineTuneJob appeared and
    finished, and the most that were unfinished at once."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        super().__init__(api_client, namespace)
        self.seen: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.most_unfinished = 0

    def _on(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self.seen.setdefault(name, time.monotonic())
        if (obj.get("status") or {}).get("phase") in FINISHED:
            self.finished.setdefault(name, time.monotonic())
        self.most_unfinished = max(self.most_unfinished, len(self.seen) - len(self.finished))

    def start(self) -> None:
        from kubernetes import client

        custom = client.CustomObjectsApi(self.api_client)

        def trials(namespace: str, **kw: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw)

        threading.Thread(target=self._loop, args=(trials, self._on), daemon=True).start()


def read_sweep(custom: Any, namespace: str, name: str) -> tuple[dict[str, Any], int]:
    """The sweep as stored and its size in bytes as the API server sent it."""
    response = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, SWEEPS, name, _preload_content=False)
    raw = response.data
    return json.loads(raw), len(raw)


def run(trials: int, parallelism: int, nodes: int, delay: str, timeout: float) -> dict[str, Any]:
    from kubernetes import client, config

    kubeconfig = kubeconfig_path()
    api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    install_crd(api_client, ROOT / "crds" / "finetunejob.yaml")
    install_crd(api_client, ROOT / "crds" / "finetunesweep.yaml")
    name = "search"
    with operator_round(core, kubeconfig, "sweep-bench", nodes, timeout) as bench_round:
        watcher = TrialWatcher(api_client, bench_round.namespace)
        watcher.start()
        try:
            return _measure(custom, watcher, bench_round, name, trials, parallelism, nodes, delay, timeout)
        finally:
            watcher.stop.set()


def _measure(
    custom: Any,
    watcher: TrialWatcher,
    bench_round: Round,
    name: str,
    trials: int,
    parallelism: int,
    nodes: int,
    delay: str,
    timeout: float,
) -> dict[str, Any]:
    """The round's figures: the operator already watches the round's namespace, the nodes exist."""
    namespace, metrics_port, operator = bench_round.namespace, bench_round.metrics_port, bench_round.operator
    wait_for_metrics(metrics_port, operator)
    load_before = os.getloadavg()[0]
    before, cpu_before = api_requests(metrics_port), cpu_seconds(operator.pid)
    start = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, SWEEPS, sweep(name, trials, parallelism, delay))
    body: dict[str, Any] = {}
    size = largest = 0
    phase = ""
    while time.monotonic() - start < timeout:
        time.sleep(5)
        body, size = read_sweep(custom, namespace, name)
        largest = max(largest, size)
        phase = (body.get("status") or {}).get("phase", "")
        if phase in ("Succeeded", "Failed"):
            break
    done = time.monotonic() - start if phase == "Succeeded" else None
    status = body.get("status") or {}
    requests = api_requests(metrics_port) - before
    cpu = cpu_seconds(operator.pid) - cpu_before
    all_trials = max(watcher.seen.values()) - start if len(watcher.seen) >= trials else None
    winner = (status.get("winner") or {}).get("name")
    return {
        "trials": trials,
        "parallelism": parallelism,
        "nodes": nodes,
        "delay": delay,
        "phase": phase,
        "error": status.get("error"),
        "sweep_succeeded_seconds": round(done, 1) if done is not None else None,
        "all_trials_exist_seconds": round(all_trials, 1) if all_trials is not None else None,
        "trials_finished": len(watcher.finished),
        "trials_finished_per_minute": round(60 * len(watcher.finished) / done, 1) if done else None,
        "most_unfinished_at_once": watcher.most_unfinished,
        "status_trials": len(status.get("trials") or []),
        "leaderboard": len(status.get("leaderboard") or []),
        "winner": winner,
        "winner_is_trial_0": winner == f"{name}-t0",
        "sweep_object_bytes_at_end": size,
        "sweep_object_bytes_largest": largest,
        "etcd_request_limit_bytes": ETCD_REQUEST_LIMIT,
        "operator_peak_rss_mib": round(peak_rss_mib(operator.pid), 1),
        "api_requests_per_trial": round(requests / trials, 2),
        "operator_cpu_ms_per_trial": round(1000 * cpu / trials, 1),
        "load_average_1m_before": round(load_before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=16, help="fake 8-GPU nodes (each trial asks for one GPU)")
    parser.add_argument("--delay", default="5s", help="how long each fake pod (check, training) runs")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--quiet-load", type=float, default=1.0, help="wait (up to 240 s) for a load under this")
    args = parser.parse_args()
    if args.quiet_load > 0:
        print(f"--- load average {wait_for_quiet(args.quiet_load):.1f} before the round", flush=True)
    figures = run(args.trials, args.parallelism, args.nodes, args.delay, args.timeout)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    ok = figures["phase"] == "Succeeded" and figures["winner_is_trial_0"]
    ok = ok and figures["most_unfinished_at_once"] <= args.parallelism
    ok = ok and figures["sweep_object_bytes_largest"] < ETCD_REQUEST_LIMIT
    print(json.dumps(figures, sort_keys=True))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
