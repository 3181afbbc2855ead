"""The chart's alerts, evaluated by Prometheus' own rule engine (`promtool test rules`) on synthetic series.

Why promtool and not a YAML check: an alert whose PromQL parses but never fires (a wrong label, a rate over
a gauge) is worse than none. Every alert gets a series that must fire it and one that must not; promtool is
built from the Go module proxy by hack/build-binaries.sh (target `promtool`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .chart import promtool, run
from .test_chart import _of, render

# a cold machine builds promtool in the first test (minutes on 2 cores)
pytestmark = pytest.mark.timeout(1800)

NAMESPACE, RELEASE = "ops", "r"
SELECTOR = f'namespace="{NAMESPACE}", job="{RELEASE}-finetune-operator-metrics"'
TARGET = {"namespace": NAMESPACE, "job": f"{RELEASE}-finetune-operator-metrics"}  # labels a gauge alert keeps


def _rules(tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    (rule,) = _of(render(RELEASE, NAMESPACE, {"metrics.prometheusRule.enabled": "true"}), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path, {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{SELECTOR}{extra}}}", "values": values}


def _fires(rules: dict[str, dict[str, Any]], name: str, at: str, labels: dict[str, str], **values: str) -> Any:
    """An expected firing alert: the rule's own labels and annotations, with the templates filled in."""
    annotations = {
        k: v.replace("{{ $value | humanize }}", values.get("value", "")) for k, v in rules[name]["annotations"].items()
    }
    annotations = {
        k: v.replace("{{ $value | humanizePercentage }}", values.get("percent", "")).replace(
            "{{ $labels.kind }}", labels.get("kind", "")
        )
        for k, v in annotations.items()
    }
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": {**rules[name]["labels"], **labels}, "exp_annotations": annotations}],
    }


def _quiet(name: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": []}


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    path, rules = _rules(tmp_path)
    result = run([promtool(), "check", "rules", str(path)])
    assert f"{len(rules)} rules found" in result.stdout, result.stdout


def test_every_alert_fires_on_its_symptom_and_only_then(tmp_path: Path) -> None:
    path, rules = _rules(tmp_path)
    tests = [
        {  # scraped up for 10 minutes, then the target is down
            "interval": "1m",
            "input_series": [_series("up", "1x10 0x30")],
            "alert_rule_test": [_quiet("FineTuneOperatorDown", "9m"), _fires(rules, "FineTuneOperatorDown", "20m", {})],
        },
        {  # no unexpected errors for 20 minutes, then one a minute
            "interval": "1m",
            "input_series": [_series("finetune_operator_reconcile_errors_total", "0x20 1+1x30", kind="unexpected")],
            "alert_rule_test": [
                _quiet("FineTuneOperatorReconcileBug", "20m"),
                _fires(rules, "FineTuneOperatorReconcileBug", "45m", {}, value="15"),
            ],
        },
        {  # 10 passes a minute; 1 temporary error a minute for 30 minutes (10 %), then 5 (50 %)
            "interval": "1m",
            "input_series": [
                _series("finetune_operator_reconciles_total", "0+10x90", result="ok"),
                _series("finetune_operator_reconcile_errors_total", "0+1x30 30+5x60", kind="temporary"),
            ],
            "alert_rule_test": [
                _quiet("FineTuneOperatorApiTrouble", "30m"),
                _fires(rules, "FineTuneOperatorApiTrouble", "70m", {}, percent="50%"),
            ],
        },
        {  # a backlog that drains in 5 minutes is normal; one that stays is not
            "interval": "1m",
            "input_series": [_series("finetune_operator_queue_depth", "200x5 0x20 200x30")],
            "alert_rule_test": [
                _quiet("FineTuneOperatorBacklog", "25m"),
                _fires(rules, "FineTuneOperatorBacklog", "50m", TARGET),
            ],
        },
        {  # Job creates: fast (under 0.1 s) for 30 minutes, then every one between 5 and 10 s
            "interval": "1m",
            "input_series": [
                _series("finetune_operator_child_create_seconds_bucket", "0+10x30 300x60", kind="Job", le="0.1"),
                _series("finetune_operator_child_create_seconds_bucket", "0+10x30 300x60", kind="Job", le="5.0"),
                _series("finetune_operator_child_create_seconds_bucket", "0+10x30 300+10x60", kind="Job", le="10.0"),
                _series("finetune_operator_child_create_seconds_bucket", "0+10x30 300+10x60", kind="Job", le="+Inf"),
            ],
            "alert_rule_test": [
                _quiet("FineTuneOperatorSlowChildCreate", "30m"),
                _fires(rules, "FineTuneOperatorSlowChildCreate", "60m", {"kind": "Job"}),
            ],
        },
        {  # 3 failures in an hour is within the threshold (5); 17 is not
            "interval": "5m",
            "input_series": [
                _series("finetune_operator_phase_transitions_total", "0 1 2 3x12 10 20 30", phase="Failed")
            ],
            "alert_rule_test": [_quiet("FineTuneJobsFailing", "60m"), _fires(rules, "FineTuneJobsFailing", "85m", {})],
        },
    ]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == set(rules), f"alerts without a test: {set(rules) - tested}"
    spec = tmp_path / "alerts.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [path.name], "evaluation_interval": "1m", "tests": tests}))
    result = run([promtool(), "test", "rules", str(spec)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
