"""The evaluation gate: do a run's metrics satisfy every `evaluation.gate` rule? Pure.

Metric names are `<split>_<metric>` (test_loss, validation_accuracy) over the trainer's
`{"test": {"loss": 1.4}}` shape. A missing or non-numeric metric fails its rule: a gate must never pass
for lack of evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunejob import GateRule


@dataclass(frozen=True)
class RuleResult:
    metric: str
    value: float | None
    min: float | None
    max: float | None
    passed: bool

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric, "value": self.value, "passed": self.passed}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out

    def describe(self) -> str:
        bounds = " and ".join(
            part
            for part in (
                f">= {self.min:g}" if self.min is not None else "",
                f"<= {self.max:g}" if self.max is not None else "",
            )
            if part
        )
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{self.metric}={shown} (must be {bounds})"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    results: tuple[RuleResult, ...]

    @property
    def failures(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def summary(self) -> str:
        """One line for `kubectl get`: the first rule and the verdict."""
        if not self.results:
            return "no rules: passed"
        first = self.results[0]
        shown = "missing" if first.value is None else f"{first.value:.4g}"
        return f"{first.metric}={shown} {'passed' if self.passed else 'failed'}"

    def to_status(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "results": [r.to_status() for r in self.results],
        }


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """{"test": {"loss": 1.4}} -> {"test_loss": 1.4}; non-numeric values are left out."""
    flat: dict[str, float] = {}
    for split, values in metrics.items():
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                flat[f"{split}_{name}"] = float(value)
    return flat


def evaluate_rule(rule: GateRule, flat: dict[str, float]) -> RuleResult:
    value = flat.get(rule.metric)
    passed = value is not None and (rule.min is None or value >= rule.min) and (rule.max is None or value <= rule.max)
    return RuleResult(rule.metric, value, rule.min, rule.max, passed)


def evaluate_gate(rules: list[GateRule], metrics: dict[str, Any]) -> GateResult:
    """Every rule must hold; no rules means any finished model passes."""
    flat = flatten_metrics(metrics)
    results = tuple(evaluate_rule(rule, flat) for rule in rules)
    return GateResult(all(r.passed for r in results), results)
