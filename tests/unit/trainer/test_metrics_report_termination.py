"""Metric formulas, the report page and the bounded termination message."""

from __future__ import annotations

import json
import math

from finetune_trainer.core.termination import LIMIT, termination_line
from finetune_trainer.evaluation.metrics import causal_lm_metrics, classification_metrics, gate_names
from finetune_trainer.evaluation.report import loss_curve_png, loss_history, render_html


def test_causal_lm_metrics_weight_by_tokens() -> None:
    metrics = causal_lm_metrics(loss_sum=20.0, tokens=10.0)
    assert metrics == {"loss": 2.0, "perplexity": round(math.exp(2.0), 6)}
    assert causal_lm_metrics(1e9, 1.0)["perplexity"] == round(math.exp(50.0), 6)
    assert causal_lm_metrics(0.0, 0.0) == {}


def test_classification_macro_f1() -> None:
    # 3 classes: class 0 perfect, class 1 half right, class 2 never predicted
    confusion = [[4, 0, 0], [0, 2, 2], [0, 2, 0]]
    metrics = classification_metrics(confusion, loss_sum=5.0, count=10.0)
    assert metrics["accuracy"] == 0.6
    f1_0, f1_1, f1_2 = 1.0, 2 * 2 / (4 + 4), 0.0
    assert metrics["f1"] == round((f1_0 + f1_1 + f1_2) / 3, 6)
    assert metrics["loss"] == 0.5


def test_gate_names() -> None:
    assert gate_names({"test": {"loss": 1.0}, "validation": {"f1": 0.5}}) == {
        "test_loss": 1.0,
        "validation_f1": 0.5,
    }


def test_report_embeds_png_and_metrics() -> None:
    history = loss_history(
        [
            {"step": 1, "loss": 2.0},
            {"step": 2, "loss": 1.5},
            {"step": 2, "eval_loss": 1.7},
            {"step": 2, "train_runtime": 3.0},
        ]
    )
    assert history == {"train": [(1, 2.0), (2, 1.5)], "validation": [(2, 1.7)]}
    png = loss_curve_png(history, "t")
    assert png.startswith(b"\x89PNG")
    page = render_html("ns/job run 1", {"test": {"loss": 1.25}}, {"test": {"loss": 2.5}}, {"steps": 2}, png)
    assert "data:image/png;base64," in page and "1.2500" in page and "2.5000" in page and "<script" not in page


def test_termination_line_fits_4096_bytes() -> None:
    line = termination_line("Succeeded", "trained 3 steps", 2, {"test": {"loss": 1.0}})
    assert json.loads(line) == {
        "code": "Succeeded",
        "message": "trained 3 steps",
        "run": 2,
        "metrics": {"test": {"loss": 1.0}},
    }
    long_line = termination_line("DatasetInvalid", 'é"x' * 5000, 2)
    assert len(long_line.encode()) <= LIMIT
    decoded = json.loads(long_line)
    assert decoded["code"] == "DatasetInvalid" and decoded["message"].endswith("...")
