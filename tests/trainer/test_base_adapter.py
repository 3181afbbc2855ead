"""`baseModel.adapter`: a run that starts from a previous run's published LoRA adapter (SFT, then DPO on top).

On the tiny Llama and the real S3 server: an SFT run publishes an adapter; a DPO run names it in
`baseModel.adapter` and must train on the base model with that adapter merged in (the merged weights equal
peft's own merge of the two, and differ from the raw base), publishing merged weights. An adapter trained on
another base model is refused by `validate` (the `Validating` step) and by `train`, naming baseModel.adapter
and the base it was trained on; a folder that is not an adapter is refused too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config, upload_folder
from tests.trainer.conftest import TrainerResult

pytestmark = pytest.mark.timeout(900)

Runner = Callable[[dict[str, Any]], TrainerResult]
USER_ERROR = 42


def sft_adapter(s3_bucket: Any, model_uri: str, run_trainer: Runner) -> str:
    """Run 1 of job `test-job`: a short SFT LoRA run; returns its published adapter folder."""
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/sft.jsonl", arithmetic_records(40))
    result = run_trainer(trainer_config(s3_bucket.name, model_uri, train))
    assert result.exit_code == 0, result.termination
    return s3_bucket.uri("out/run-1/model/")


def dpo_config(s3_bucket: Any, model_uri: str, adapter: str) -> dict[str, Any]:
    """A DPO run of another job (`dpo-job`, its own output folder) on top of `adapter`."""
    pairs = [
        {"prompt": f"what is {a} ?", "chosen": f" {a} and {a}", "rejected": f" {a}"}
        for a in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "zero")
    ]
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/pairs.jsonl", pairs * 2)
    raw = trainer_config(s3_bucket.name, model_uri, train)
    raw["job"] = {**raw["job"], "name": "dpo-job", "uid": "u-2"}
    raw["output"] = {"uri": s3_bucket.uri("dpo/"), "runUri": s3_bucket.uri("dpo/run-1/")}
    raw["baseModel"]["adapter"] = adapter
    raw["dataset"] = {**raw["dataset"], "schema": "preference", "split": {"validation": 0.0, "test": 0.2, "seed": 7}}
    raw["method"] = {**raw["method"], "objective": "dpo", "mergeWeights": True}
    raw["hyperparameters"].update({"maxSteps": 3, "batchSize": 4})
    return raw


def test_dpo_starts_from_the_sft_runs_adapter_merged_in(
    s3_bucket: Any, tiny_llama_folder: Path, tiny_llama_uri: str, run_trainer: Runner, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = sft_adapter(s3_bucket, tiny_llama_uri, run_trainer)
    result = run_trainer(dpo_config(s3_bucket, tiny_llama_uri, adapter))
    assert result.exit_code == 0, result.termination

    merged = tmp_path / "work" / "base-merged"  # FTO_WORK_DIR (conftest): the run's base model folder
    assert json.loads((merged / "merged_adapter.json").read_text()) == {
        "baseModelUri": tiny_llama_uri,
        "adapter": adapter,
    }
    local_adapter = tmp_path / "sft-adapter"
    for item in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="out/run-1/model/")["Contents"]:
        target = local_adapter / item["Key"][len("out/run-1/model/") :]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3_bucket.client.download_file(s3_bucket.name, item["Key"], str(target))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_folder, dtype=torch.float32)
    raw_weights = {k: v.clone() for k, v in base.state_dict().items()}
    expected = PeftModel.from_pretrained(base, local_adapter).merge_and_unload().state_dict()
    got = load_file(str(merged / "model.safetensors"))
    changed = 0
    for name, value in got.items():
        assert torch.allclose(value.float(), expected[name].float(), atol=1e-6), name
        changed += int(not torch.allclose(value.float(), raw_weights[name].float()))
    assert changed > 0, "the merged base model equals the raw base: the SFT adapter was not merged"

    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="dpo/run-1/model/")["Contents"]
    published = {item["Key"] for item in listed}
    assert "dpo/run-1/model/model.safetensors" in published  # merged weights: base + SFT + DPO
    assert "dpo/run-1/model/adapter_config.json" not in published


def test_an_adapter_of_another_base_model_is_refused_in_validation_and_training(
    s3_bucket: Any, tiny_llama_folder: Path, tiny_llama_uri: str, run_trainer: Runner, tmp_path: Path
) -> None:
    from finetune_trainer.cli import main

    adapter = sft_adapter(s3_bucket, tiny_llama_uri, run_trainer)
    other = upload_folder(s3_bucket.client, s3_bucket.name, tiny_llama_folder, "models/other-copy")
    raw = dpo_config(s3_bucket, other, adapter)

    config, summary = tmp_path / "validate.json", tmp_path / "summary.json"
    config.write_text(json.dumps(raw))
    assert main(["validate", "--config", str(config), "--output", str(summary)]) == USER_ERROR
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["code"] == "ModelInvalid", termination
    assert f"baseModel.adapter: {adapter} was trained on {tiny_llama_uri}" in termination["message"]

    result = run_trainer(raw)
    assert result.exit_code == USER_ERROR and result.termination["code"] == "ModelInvalid", result.termination
    assert "was trained on" in result.termination["message"]

    not_an_adapter = dpo_config(s3_bucket, tiny_llama_uri, tiny_llama_uri)  # a model folder, not an adapter
    result = run_trainer(not_an_adapter)
    assert result.exit_code == USER_ERROR, result.termination
    assert "is not a LoRA adapter folder (no adapter_config.json)" in result.termination["message"]
