"""A generation metric gates a run on a real API server (kwok finishes the training pod with the trainer's
termination message; the real trainer's own message is checked against the same gate code in
tests/trainer/test_selection.py), and the selection fields reach the trainer's config."""

from __future__ import annotations

import json

import pytest

from .conftest import Jobs, Operator, ftj_manifest

pytestmark = pytest.mark.cluster

GENERATION = {"maxSamples": 20, "maxNewTokens": 32, "regex": "[A-Z]+-[0-9]+"}


def _message(exact_match: float, rouge_l: float) -> str:
    """A termination message as the trainer writes it with evaluation.generation set."""
    test = {"loss": 1.2, "perplexity": 3.3, "exact_match": exact_match, "token_f1": 0.7, "rouge_l": rouge_l}
    metrics = {"validation": {"loss": 1.25, "perplexity": 3.5}, "test": {**test, "regex_match": 0.9}}
    return json.dumps({"code": "Succeeded", "message": "trained 12 steps", "run": 1, "metrics": metrics})


def test_a_generation_metric_below_its_threshold_fails_the_gate(operator: Operator, jobs: Jobs, namespace: str) -> None:
    evaluation = {
        "intervalSteps": 4,
        "earlyStopping": {"patience": 2},
        "generation": GENERATION,
        "gate": [{"metric": "test_loss", "max": 2.0}, {"metric": "test_exact_match", "min": 0.5}],
    }
    jobs.create(namespace, ftj_manifest("gen", evaluation=evaluation))
    pod = jobs.running_pod(namespace, "gen-r1")
    config_map = jobs.cluster.core.read_namespaced_config_map("gen-r1-config", namespace)
    rendered = json.loads(config_map.data["config.json"])["evaluation"]
    assert rendered["intervalSteps"] == 4 and rendered["earlyStopping"] == {"patience": 2, "minDelta": 0.0}
    assert rendered["generation"]["regex"] == GENERATION["regex"] and "gate" not in rendered

    jobs.finish_pod(namespace, pod.metadata.name, 0, _message(exact_match=0.35, rouge_l=0.8))
    status = jobs.wait_phase(namespace, "gen", "Failed")
    assert status["error"]["code"] == "GateFailed" and "test_exact_match=0.35" in status["error"]["message"]
    results = {r["metric"]: r for r in status["gate"]["results"]}
    assert results["test_loss"]["passed"] is True
    assert results["test_exact_match"] == {"metric": "test_exact_match", "value": 0.35, "min": 0.5, "passed": False}
    assert status["metrics"]["test"]["rouge_l"] == 0.8
