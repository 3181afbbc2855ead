"""Validation while training, early stopping and the best checkpoint; generation metrics and their gate.

The real trainer against the real S3 server, on the tiny Llama. A full fine-tune at a learning rate too
high for it (0.02) overshoots on purpose: the validation loss falls to its lowest at step 4 (3.49 measured),
then rises by 0.3 and more (3.94 at step 6, 3.83 at step 8). So the best checkpoint is step 4's, early stopping
fires two evaluations later, and a preemption at step 5 shows the best-so-far state coming back from storage
into a new pod.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finetune_operator.api.finetunejob import GateRule
from finetune_operator.core.observed import parse_termination_message
from finetune_operator.finetunejob.gate import evaluate_gate
from finetune_trainer.training.callbacks import TrainerHooks
from safetensors.torch import load

from tests.support.ports import free_port
from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = [pytest.mark.s3, pytest.mark.slow]

Runner = Callable[[dict[str, Any]], TrainerResult]


def read(s3_bucket: Any, key: str) -> bytes:
    return bytes(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())


def keys(s3_bucket: Any, prefix: str) -> list[str]:
    pages = s3_bucket.client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture
def sigterm_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], None]:
    """Send this process SIGTERM at the end of optimizer step N (the trainer's own handler takes it)."""
    target: dict[str, int | None] = {"step": None}
    real = TrainerHooks.on_step_end

    def on_step_end(self: TrainerHooks, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == target["step"]:
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, args, state, control, **kwargs)

    monkeypatch.setattr(TrainerHooks, "on_step_end", on_step_end)

    def arm(step: int | None) -> None:
        target["step"] = step

    return arm


def test_early_stopping_publishes_the_best_checkpoint_across_a_preemption(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner, sigterm_at: Callable[[int | None], None], tmp_path: Path
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(96, seed=4))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"]["split"] = {"validation": 0.2, "test": 0.1, "seed": 7}
    raw["method"] = {"type": "full"}
    raw["hyperparameters"].update({"maxSteps": 40, "learningRate": 0.02})
    raw["checkpointing"] = {"intervalSteps": 100, "keep": 1}
    raw["evaluation"] = {"intervalSteps": 2, "earlyStopping": {"patience": 2, "minDelta": 0.0}}

    sigterm_at(5)  # after the best evaluation (step 4), before the next
    first = run_trainer(raw)
    assert first.exit_code == 75, first.termination
    state = json.loads(read(s3_bucket, "out/run-1/selection.json"))
    assert state["best"]["step"] == 4 and [e["step"] for e in state["history"]] == [2, 4], state
    best_keys = keys(s3_bucket, "out/run-1/best/")
    assert f"out/run-1/best/{state['bestFolder']}/model.safetensors" in best_keys
    assert {k.split("/")[3] for k in best_keys} == {state["bestFolder"]}  # step 2's folder was deleted

    shutil.rmtree(tmp_path / "work")  # a new pod: nothing local survives, only storage
    sigterm_at(None)
    second = run_trainer(raw)
    assert second.exit_code == 0, second.termination
    assert second.termination["message"] == "trained 8 steps"  # evaluations at 6 and 8 did not improve

    document = json.loads(read(s3_bucket, "out/run-1/metrics.json"))
    history = document["validationHistory"]
    assert [e["step"] for e in history["history"]] == [2, 4, 6, 8], history
    assert history["best"] == state["best"] and history["earlyStopped"] and history["stoppedAtStep"] == 8
    assert document["bestStep"] == 4 and document["earlyStopped"] is True and document["steps"] == 8
    losses = [e["loss"] for e in history["history"]]
    assert losses[1] < min(losses[0], losses[2], losses[3]), losses
    # the model tested (and gated: these are the termination message's metrics) is step 4's, not step 8's
    validation_loss = second.termination["metrics"]["validation"]["loss"]
    assert validation_loss == pytest.approx(state["best"]["loss"], abs=1e-5)
    assert abs(validation_loss - losses[-1]) > 1e-3
    published = load(read(s3_bucket, "out/run-1/model/model.safetensors"))
    best = load(read(s3_bucket, f"out/run-1/best/{state['bestFolder']}/model.safetensors"))
    assert published.keys() == best.keys() and all((published[k] == best[k]).all() for k in best)
    # the last checkpoint (step 8) holds other weights than the published model
    last = load(read(s3_bucket, "out/run-1/checkpoints/checkpoint-8/model.safetensors"))
    assert any(not (last[k] == best[k]).all() for k in best)
    assert [e["eval_loss"] for e in document["history"] if "eval_loss" in e][-2:] == losses[2:]

    report = read(s3_bucket, "out/run-1/report.html").decode()
    assert "step 4 (validation loss" in report and "early stopping fired at step 8" in report


def test_lora_the_best_adapter_not_the_last_is_published(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    """The default method: the adapter of the best step is loaded back (Trainer._load_from_checkpoint) before the
    final evaluation. Every answer in train is " apple" and the validation split holds the true sums: after a
    first gain (the answer's shape) the validation loss rises (5.640, 5.585, 5.630, 5.643 measured)."""
    wrong = [{"prompt": r["prompt"], "completion": " apple"} for r in arithmetic_records(96, seed=4)]
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", wrong)
    right = put_jsonl(s3_bucket.client, s3_bucket.name, "data/validation.jsonl", arithmetic_records(16, seed=5))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"]["validation"] = {"uri": right}
    raw["hyperparameters"].update({"maxSteps": 4, "learningRate": 0.05})
    raw["evaluation"] = {"intervalSteps": 1}
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    state = json.loads(read(s3_bucket, "out/run-1/selection.json"))
    losses = [e["loss"] for e in state["history"]]
    assert [e["step"] for e in state["history"]] == [1, 2, 3, 4] and state["best"]["step"] == 2, state
    assert not state["earlyStopped"] and min(losses[2:]) > losses[1] + 0.02  # no earlyStopping: all 4 steps
    assert result.termination["metrics"]["validation"]["loss"] == pytest.approx(state["best"]["loss"], abs=1e-5)
    published = load(read(s3_bucket, "out/run-1/model/adapter_model.safetensors"))
    best = load(read(s3_bucket, f"out/run-1/best/{state['bestFolder']}/adapter_model.safetensors"))
    last = load(read(s3_bucket, "out/run-1/checkpoints/checkpoint-4/adapter_model.safetensors"))
    assert published.keys() == best.keys() and all((published[k] == best[k]).all() for k in best)
    assert any(not (last[k] == best[k]).all() for k in best)
    # a step that is validated keeps its training loss in the log (metrics.json, TensorBoard, the API's result
    # file): the validation's own log entry must not take the step's place
    history = json.loads(read(s3_bucket, "out/run-1/metrics.json"))["history"]
    assert sorted(e["step"] for e in history if "loss" in e) == [1, 2, 3, 4], history
    assert sorted(e["step"] for e in history if "eval_loss" in e) == [1, 2, 3, 4], history


def test_generation_metrics_gate_the_run_and_fill_the_report(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    records = [
        {
            "messages": [
                {"role": "user", "content": f"{r['prompt']} <b>&"},
                {"role": "assistant", "content": r["completion"].strip()},
            ]
        }
        for r in arithmetic_records(80, seed=6)
    ]
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/chat.jsonl", records)
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"].update({"schema": "chat", "maxSeqLength": 96})
    raw["hyperparameters"]["maxSteps"] = 8
    generation = {"maxSamples": 5, "maxNewTokens": 6, "regex": r"[a-z ]+", "jsonValid": True}
    raw["evaluation"] = {"compareBaseModel": True, "generation": generation}
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination

    # what the operator reads: the termination message, parsed by its own code, gated by its own gate
    report = parse_termination_message(json.dumps(result.termination))
    assert report is not None and report.code == "Succeeded"
    test = report.metrics["test"]
    assert {"loss", "exact_match", "token_f1", "rouge_l", "regex_match", "json_valid"} <= set(test)
    rules = [GateRule(metric="test_exact_match", min=0.99), GateRule(metric="test_token_f1", min=0.0)]
    gate = evaluate_gate(rules, report.metrics)
    assert not gate.passed and [r.metric for r in gate.failures] == ["test_exact_match"]
    assert gate.results[0].value == test["exact_match"]

    document = json.loads(read(s3_bucket, "out/run-1/metrics.json"))
    rows = document["generation"]
    assert len(rows) == 5 and all({"prompt", "reference", "answer", "baseAnswer"} <= set(row) for row in rows)
    exact = sum(row["answer"].strip() == row["reference"].strip() for row in rows) / 5
    assert test["exact_match"] == pytest.approx(exact)
    assert {"exact_match", "token_f1", "rouge_l"} <= set(document["baseModel"]["test"])
    assert document["gateMetrics"]["test_rouge_l"] == test["rouge_l"]
    assert document["gateMetrics"]["base_test_rouge_l"] == document["baseModel"]["test"]["rouge_l"]

    page = read(s3_bucket, "out/run-1/report.html").decode()
    assert "Generated answers" in page and "base answer" in page
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page  # the prompts' markup is shown, never rendered
    assert rows[0]["reference"] in page


def test_generation_on_text_data_is_a_config_error_before_training(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    texts = [{"text": r["prompt"] + r["completion"]} for r in arithmetic_records(20)]
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/texts.jsonl", texts)
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    del raw["dataset"]["schema"]  # detected as text, then refused
    raw["evaluation"] = {"generation": {"maxSamples": 3}}
    result = run_trainer(raw)
    assert result.exit_code == 42 and result.termination["code"] == "ConfigInvalid", result.termination
    assert "evaluation.generation: dataset schema 'text' has no prompts" in result.termination["message"]
    assert not keys(s3_bucket, "out/run-1/checkpoints/")


def test_fsdp_selection_restores_the_gathered_best_and_generates_in_lockstep(
    s3_bucket: Any, tiny_llama_uri: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """Two processes under gloo with sharded weights: the best model is gathered to be saved, broadcast back
    from rank 0 to be restored, and every rank generates (a sharded forward is a collective)."""
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(96, seed=4))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"]["split"] = {"validation": 0.2, "test": 0.1, "seed": 7}
    raw["method"] = {"type": "full"}
    raw["hyperparameters"].update({"maxSteps": 40, "learningRate": 0.02, "batchSize": 4})
    raw["checkpointing"] = {"intervalSteps": 100, "keep": 1}
    raw["evaluation"] = {
        "intervalSteps": 2,
        "earlyStopping": {"patience": 2},
        "generation": {"maxSamples": 3, "maxNewTokens": 4},
    }
    raw["distributed"] = {"workers": 1, "processesPerWorker": 2, "sharding": "fsdp"}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    env = dict(trainer_env, NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)]
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False)
    assert done.returncode == 0, log.read_text()[-4000:]
    termination = json.loads((tmp_path / "termination-log").read_text())
    document = json.loads(read(s3_bucket, "out/run-1/metrics.json"))
    history = document["validationHistory"]
    assert document["earlyStopped"] and document["bestStep"] < document["steps"], history
    assert termination["metrics"]["validation"]["loss"] == pytest.approx(history["best"]["loss"], abs=1e-5)
    published = load(read(s3_bucket, "out/run-1/model/model.safetensors"))
    best = load(read(s3_bucket, f"out/run-1/best/{history['bestFolder']}/model.safetensors"))
    assert published.keys() == best.keys() and all((published[k] == best[k]).all() for k in best)
    assert {"exact_match", "token_f1", "rouge_l"} <= set(termination["metrics"]["test"])
    assert len(document["generation"]) == 3
