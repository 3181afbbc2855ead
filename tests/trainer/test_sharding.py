"""Sharded full fine-tuning (`distributed.sharding: fsdp`) on CPU: two processes under gloo, the trainer's own
launcher, gradient checkpointing, sharded checkpoints in the real S3 server. SIGTERM mid-run; the run resumes
the sharded checkpoint with one process (another world size), is preempted again, and two processes resume
that and finish (evaluation in lockstep, the shards gathered into one ordinary model).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import PREEMPTED_EXIT_CODE

from tests.support.ports import free_port
from tests.trainer.builders import arithmetic_records, checkpoint_files, put_jsonl, trainer_config
from tests.trainer.test_resume_distributed import complete_steps

pytestmark = [pytest.mark.s3, pytest.mark.slow]

STEPS = 40


def _train(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)]
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _preempted(s3_bucket: Any, config: Path, env: dict[str, str], log: Path, after: int) -> int:
    """Run an attempt, SIGTERM it once a checkpoint newer than step `after` is complete; the step it stopped at."""
    process = _train(config, env, log)
    try:
        deadline = time.monotonic() + 300
        while not [s for s in complete_steps(s3_bucket) if s > after] and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-4000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(240)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert exit_code == PREEMPTED_EXIT_CODE, output[-4000:]
    stopped = complete_steps(s3_bucket)[-1]
    assert after < stopped < STEPS, output[-4000:]
    return stopped


def _processes(config: Path, raw: dict[str, Any], count: int) -> None:
    raw["distributed"] = {"workers": 1, "processesPerWorker": count, "sharding": "fsdp"}
    config.write_text(json.dumps(raw))


def test_fsdp_trains_checkpoints_sharded_is_preempted_and_resumes_on_another_world_size(
    s3_bucket: Any, tiny_llama_uri: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(200))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["method"] = {"type": "full"}
    raw["hyperparameters"].update({"maxSteps": STEPS, "batchSize": 4, "gradientCheckpointing": True})
    raw["checkpointing"] = {"intervalSteps": 4, "keep": 2}
    config = tmp_path / "config.json"
    env = dict(trainer_env, NODE_RANK="0", MASTER_ADDR="127.0.0.1")

    # 1. Two processes: preempted after the first sharded checkpoint.
    _processes(config, raw, 2)
    first = tmp_path / "attempt-1.log"
    stopped = _preempted(s3_bucket, config, dict(env, MASTER_PORT=str(free_port())), first, 0)
    assert "launching 1 x 2 processes" in first.read_text() and "[rank 1]" in first.read_text()
    files = checkpoint_files(s3_bucket, stopped)
    # each rank's shard of the model and of the optimizer, DCP's metadata, and no whole-model file
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer_state.json", "_COMPLETE"} <= files, files
    assert "model.safetensors" not in files and "optimizer.pt" not in files
    listing = s3_bucket.client.list_objects_v2(
        Bucket=s3_bucket.name, Prefix=f"out/run-1/checkpoints/checkpoint-{stopped}/"
    )
    keys = {item["Key"].split(f"checkpoint-{stopped}/", 1)[1] for item in listing["Contents"]}
    assert {"pytorch_model_fsdp_0/__1_0.distcp", "optimizer_0/__1_0.distcp"} <= keys, keys

    # 2. One process resumes the two-process checkpoint (DCP reshards on load), and is preempted in turn.
    _processes(config, raw, 1)
    second = tmp_path / "attempt-2.log"
    again = _preempted(s3_bucket, config, dict(env, MASTER_PORT=str(free_port())), second, stopped)
    assert f"(step {stopped})" in second.read_text() and "resuming from" in second.read_text()
    assert {"__0_0.distcp", ".metadata"} <= checkpoint_files(s3_bucket, again)
    assert "__1_0.distcp" not in checkpoint_files(s3_bucket, again)

    # 3. Two processes resume the one-process checkpoint and finish: evaluation and the gathered model.
    _processes(config, raw, 2)
    third = tmp_path / "attempt-3.log"
    process = _train(config, dict(env, MASTER_PORT=str(free_port())), third)
    try:
        exit_code = process.wait(600)
    finally:
        if process.poll() is None:
            process.kill()
    output = third.read_text()
    assert exit_code == 0, output[-4000:]
    assert f"(step {again})" in output and "resuming from" in output
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["code"] == "Succeeded" and termination["message"] == f"trained {STEPS} steps"
    document = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/metrics.json")["Body"].read()
    )
    steps = [entry["step"] for entry in document["history"] if "loss" in entry]
    assert steps == sorted(set(steps)), "history repeats steps: training restarted instead of resuming"
    assert steps[0] <= stopped < again < steps[-1] == STEPS
    assert document["processes"] == 2 and document["metrics"]["test"]["loss"] < 10
    recorded = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/trainer_config.json")["Body"].read()
    )
    assert recorded["distributed"]["sharding"] == "fsdp" and recorded["hyperparameters"]["gradientCheckpointing"]
    model = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="out/run-1/model/")
    names = {item["Key"].rsplit("/", 1)[1] for item in model["Contents"]}
    assert "model.safetensors" in names  # the shards gathered into one ordinary model
