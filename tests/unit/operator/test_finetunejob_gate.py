"""The evaluation gate: every rule must hold; missing metrics fail; summaries name the metric."""

from __future__ import annotations

from finetune_operator.api.finetunejob import GateRule
from finetune_operator.finetunejob.gate import evaluate_gate, flatten_metrics

METRICS = {
    "validation": {"loss": 1.5},
    "test": {"loss": 1.4, "accuracy": 0.91, "note": "text", "nan": float("nan")},
}


def test_flatten_keeps_numbers_only() -> None:
    assert flatten_metrics(METRICS) == {"validation_loss": 1.5, "test_loss": 1.4, "test_accuracy": 0.91}


def test_all_rules_hold() -> None:
    result = evaluate_gate([GateRule(metric="test_loss", max=1.8), GateRule(metric="test_accuracy", min=0.9)], METRICS)
    assert result.passed and result.summary() == "test_loss=1.4 passed"
    assert result.to_status()["results"][0] == {
        "metric": "test_loss",
        "value": 1.4,
        "passed": True,
        "max": 1.8,
    }


def test_one_failing_rule_fails_the_gate_and_is_described() -> None:
    result = evaluate_gate([GateRule(metric="test_loss", max=1.8), GateRule(metric="test_accuracy", min=0.95)], METRICS)
    assert not result.passed
    assert [r.metric for r in result.failures] == ["test_accuracy"]
    assert result.failures[0].describe() == "test_accuracy=0.91 (must be >= 0.95)"


def test_bounds_are_inclusive() -> None:
    assert evaluate_gate([GateRule(metric="test_loss", min=1.4, max=1.4)], METRICS).passed


def test_missing_metric_fails() -> None:
    result = evaluate_gate([GateRule(metric="test_f1", min=0.5)], METRICS)
    assert not result.passed and result.results[0].value is None
    assert "missing" in result.failures[0].describe()


def test_no_rules_pass() -> None:
    assert evaluate_gate([], {}).passed
