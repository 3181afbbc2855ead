"""bench/kubeflow_compare.py's arithmetic: the time figures, per-round ratios, medians, and the request and write
counts it reads (controller-runtime's metrics page, the API server's audit log).

Why: the comparison with Kubeflow Trainer rests on these; a ratio taken across rounds, a median over the rounds
that did not time out, or a write counted for the wrong client would print a verdict the run did not show. The
run itself needs the kwok cluster and both Go binaries (hack/kubeflow-trainer.sh build), so it is run by hand
(`python bench/kubeflow_compare.py --quick`, docs/benchmarks.md), not in CI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.kubeflow_compare import RATIO_KEYS, earliest, elapsed, ratio_lines, summarise, timings
from bench.kubeflow_local import rest_client_requests, webhook_configurations
from tests.support.audit import writes_by_client


def test_elapsed_is_the_last_key_seen_and_none_when_one_never_was() -> None:
    assert elapsed({"a": 10.5, "b": 12.25}, 10.0, 2) == 2.25
    assert elapsed({"a": 10.5}, 10.0, 2) is None  # a timeout has no figure


def test_earliest_takes_each_keys_first_pod() -> None:
    assert earliest({"a": 3.0, "b": 5.0}, {"a": 4.0, "c": 1.0}) == {"a": 3.0, "b": 5.0, "c": 1.0}


def test_timings_count_propagation_from_the_training_pod_only() -> None:
    figures = timings(
        start=100.0,
        jobs=2,
        first_pods={"a": 101.0, "b": 102.0},
        training_jobs={"a": 103.0, "b": 104.0},
        training_pods={"a": 103.5, "b": 104.5},
        training_done={"a": 110.0, "b": 111.0},
        done={"a": 110.5, "b": 113.0},
    )
    assert figures["all_first_pods_seconds"] == 2.0
    assert figures["all_training_pods_seconds"] == 4.5
    assert figures["all_done_seconds"] == 13.0
    assert figures["propagation_p50_seconds"] == 0.5 and figures["propagation_p99_seconds"] == 2.0
    assert figures["done"] == 2


def arm(number: int, name: str, seconds: float | None, requests: float, rss: float) -> dict[str, Any]:
    figures: dict[str, Any] = {key: 1.0 for key in RATIO_KEYS}
    figures.update(round=number, arm=name, all_training_pods_seconds=seconds, api_requests_per_job=requests)
    figures["controller_peak_rss_mib"] = rss
    return figures


def test_ratios_are_kubeflow_over_ours_per_round_then_the_median() -> None:
    rounds = [
        arm(1, "ours", 10.0, 20.0, 100.0),
        arm(1, "kubeflow", 5.0, 10.0, 60.0),
        arm(2, "kubeflow", 8.0, 12.0, 60.0),
        arm(2, "ours", 20.0, 24.0, 100.0),
        arm(3, "ours", 10.0, 20.0, 120.0),
        arm(3, "kubeflow", 10.0, 30.0, 60.0),
    ]
    summary = summarise(rounds)
    pods = summary["ratios"]["all_training_pods_seconds"]
    assert pods["values"] == [0.5, 0.4, 1.0] and pods["median"] == 0.5
    assert (pods["min"], pods["max"]) == (0.4, 1.0)
    assert summary["ratios"]["api_requests_per_job"]["values"] == [0.5, 0.5, 1.5]
    assert summary["ratios"]["controller_peak_rss_mib"]["median"] == 0.6
    assert summary["arms"]["ours"]["all_training_pods_seconds"]["median"] == 10.0
    assert summary["arms"]["kubeflow"]["api_requests_per_job"]["median"] == 12.0
    assert "all_training_pods_seconds: 0.50x (0.40..1.00)" in "\n".join(ratio_lines(summary))


def test_a_round_that_timed_out_leaves_no_median_and_no_ratio() -> None:
    rounds = [
        arm(1, "ours", 10.0, 20.0, 100.0),
        arm(1, "kubeflow", None, 10.0, 60.0),
        arm(2, "ours", 12.0, 20.0, 100.0),
        arm(2, "kubeflow", 6.0, 10.0, 60.0),
    ]
    summary = summarise(rounds)
    assert summary["arms"]["kubeflow"]["all_training_pods_seconds"] is None
    assert summary["ratios"]["all_training_pods_seconds"] is None
    assert summary["ratios"]["api_requests_per_job"]["median"] == 0.5
    assert "all_training_pods_seconds: no ratio" in "\n".join(ratio_lines(summary))


def test_rest_client_requests_sums_every_verb_and_code() -> None:
    page = "\n".join(
        [
            "# HELP rest_client_requests_total Number of HTTP requests, partitioned by status code, method, and host.",
            "# TYPE rest_client_requests_total counter",
            'rest_client_requests_total{code="200",host="127.0.0.1:30443",method="GET"} 41',
            'rest_client_requests_total{code="201",host="127.0.0.1:30443",method="POST"} 7',
            'rest_client_request_duration_seconds_count{host="127.0.0.1",verb="GET"} 99',
        ]
    )
    assert rest_client_requests(page) == 48


def test_webhooks_keep_upstreams_pod_selector_and_point_at_localhost() -> None:
    mutating, validating = webhook_configurations(9001, 9002, b"ca")
    pod_hooks = [h for c in (mutating, validating) for h in c["webhooks"] if h["rules"][0]["resources"] == ["pods"]]
    assert len(pod_hooks) == 2  # JobSet's pod webhooks see only JobSet's pods, never the other arm's
    assert all(h["objectSelector"]["matchExpressions"][0]["key"] == "jobset.sigs.k8s.io/jobset-name" for h in pod_hooks)
    urls = [h["clientConfig"]["url"] for c in (mutating, validating) for h in c["webhooks"]]
    assert all(u.startswith(("https://127.0.0.1:9001/", "https://127.0.0.1:9002/")) for u in urls) and len(urls) == 8


def audit_line(namespace: str, verb: str, agent: str, at: str, resource: str = "pods") -> str:
    event = {
        "verb": verb,
        "userAgent": agent,
        "objectRef": {"resource": resource, "namespace": namespace, "name": "x"},
        "requestReceivedTimestamp": at,
        "responseStatus": {"code": 201},
    }
    return json.dumps(event, separators=(",", ":"))


@pytest.mark.parametrize("rotated", [False, True])
def test_writes_by_client_counts_one_namespace_in_the_window_by_user_agent(tmp_path: Path, rotated: bool) -> None:
    lines = [
        audit_line("arm", "create", "finetune-operator", "2026-12-07T04:00:01.000000Z", "jobs"),
        audit_line("arm", "patch", "finetune-operator", "2026-12-07T04:00:02.000000Z", "finetunejobs"),
        audit_line("arm", "create", "kube-controller-manager/v1.34.4 (linux/amd64) x", "2026-12-07T04:00:02Z"),
        audit_line("arm", "get", "finetune-operator", "2026-12-07T04:00:02.000000Z"),  # a read: not a write
        audit_line("other", "create", "finetune-operator", "2026-12-07T04:00:02.000000Z"),  # another namespace
        audit_line("arm", "delete", "kube-controller-manager/v1.34.4", "2026-12-07T04:10:00.000000Z"),  # after
        "not json",
    ]
    if rotated:  # the first writes went into hack/cluster.sh's one rotated backup
        (tmp_path / "audit-2026-12-07T04-00-03.log").write_text("\n".join(lines[:2]) + "\n")
        lines = lines[2:]
    (tmp_path / "audit.log").write_text("\n".join(lines) + "\n")
    since, until = datetime(2026, 12, 7, 4, 0, tzinfo=UTC), datetime(2026, 12, 7, 4, 5, tzinfo=UTC)
    counts = writes_by_client("arm", since, until, tmp_path / "audit.log")
    assert counts == {"finetune-operator": 2, "kube-controller-manager": 1}
