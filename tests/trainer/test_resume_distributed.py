"""SIGTERM mid-training checkpoints and exits 75; the next attempt resumes and the step count continues.
Two processes (torchrun, gloo on CPU) train one run together.

The SIGTERM test holds checkpoint uploads back (a proxy in front of the real S3 server stalls every PUT
under `checkpoints/`) and sends the signal the moment the first upload starts, so it lands mid-training
while that upload is in flight, as it would on a real node; the uploads go on once the trainer is
finishing them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import PREEMPTED_EXIT_CODE, USER_ERROR_EXIT_CODE

from tests.support.ports import free_port
from tests.trainer.builders import (
    arithmetic_records,
    checkpoint_files,
    distributed_config,
    put_jsonl,
    trainer_config,
)
from tests.trainer.conftest import TrainerResult
from tests.trainer.s3proxy import S3Proxy

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def complete_steps(s3_bucket: Any) -> list[int]:
    pages = s3_bucket.client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket.name, Prefix="out/run-1/checkpoints/"
    )
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return sorted(int(k.split("/")[3].split("-")[1]) for k in keys if k.endswith("/_COMPLETE"))


def test_sigterm_checkpoints_then_resume_continues(
    s3_bucket: Any,
    tiny_llama_uri: str,
    tmp_path: Path,
    trainer_env: dict[str, str],
    run_trainer: Callable[[dict[str, Any]], TrainerResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(200))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["hyperparameters"]["maxSteps"] = 60
    raw["checkpointing"] = {"intervalSteps": 5, "keep": 2}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    attempt_log = tmp_path / "attempt-1.log"
    log = attempt_log.open("w")
    release = threading.Event()
    started: list[subprocess.Popen[bytes]] = []
    proxy = S3Proxy(  # the first checkpoint PUT sends SIGTERM, then waits for `release`
        s3_bucket.endpoint.url,
        "/checkpoints/",
        hold=release,
        on_match=lambda: started[0].send_signal(signal.SIGTERM),
    )
    env = dict(trainer_env, AWS_ENDPOINT_URL=proxy.url)
    env.pop("AWS_ENDPOINT_URL_S3", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    started.append(process)
    try:
        deadline = time.monotonic() + 240
        while "finishing checkpoint uploads" not in attempt_log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, attempt_log.read_text()[-3000:]
            time.sleep(0.1)
        assert not complete_steps(s3_bucket), "an upload went through the closed proxy"
        release.set()  # the trainer is waiting for its uploads: let them go
        exit_code = process.wait(120)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
        proxy.close()
    output = attempt_log.read_text()
    assert exit_code == PREEMPTED_EXIT_CODE, output[-3000:]
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["code"] == "Preempted", termination
    stopped = complete_steps(s3_bucket)[-1]
    assert 5 < stopped < 60 and f"checkpoint-{stopped} saved" in termination["message"]
    # The upload in flight at SIGTERM (checkpoint-5) was finished, then the one saved on SIGTERM.
    assert f"finishing checkpoint uploads: 5 in flight, {stopped} waiting" in output, output[-3000:]
    assert complete_steps(s3_bucket) == [5, stopped]

    caplog.set_level("INFO", logger="finetune_trainer")
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    assert result.termination["message"] == "trained 60 steps"
    assert f"(step {stopped})" in caplog.text and "resuming from" in caplog.text
    document = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/metrics.json")["Body"].read()
    )
    steps = [entry["step"] for entry in document["history"] if "loss" in entry]
    assert steps == sorted(set(steps)), "history repeats steps: training restarted instead of resuming"
    assert steps[0] <= stopped < steps[-1] and document["steps"] == 60
    assert complete_steps(s3_bucket)[-1] == 60


def test_two_processes_gloo(s3_bucket: Any, tiny_llama_uri: str, tmp_path: Path, trainer_env: dict[str, str]) -> None:
    """The plain `train` command launches torchrun itself when the config asks for 2 processes."""
    config = distributed_config(s3_bucket, tiny_llama_uri, tmp_path, steps=6, interval=3, workers=1, per_worker=2)
    env = dict(trainer_env, MASTER_PORT=str(free_port()), NODE_RANK="0", MASTER_ADDR="127.0.0.1")
    command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "[rank 1]" in done.stderr and "launching 1 x 2 processes" in done.stderr
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["code"] == "Succeeded" and termination["message"] == "trained 6 steps"
    document = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/metrics.json")["Body"].read()
    )
    assert document["processes"] == 2
    assert complete_steps(s3_bucket) == [6]
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "_COMPLETE"} <= checkpoint_files(s3_bucket, 6)


def test_two_processes_user_error_keeps_exit_42(s3_bucket: Any, tmp_path: Path, trainer_env: dict[str, str]) -> None:
    """torchrun alone would exit 1 here; the launcher keeps the contract's user-error exit code."""
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/train.jsonl", Body=b'{"prompt": "a",\n')
    raw = trainer_config(s3_bucket.name, s3_bucket.uri("models/x/"), s3_bucket.uri("data/train.jsonl"))
    raw["distributed"] = {"workers": 1, "processesPerWorker": 2}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    env = dict(trainer_env, MASTER_PORT=str(free_port()))
    command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == USER_ERROR_EXIT_CODE, (done.stdout + done.stderr)[-5000:]
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["code"] == "DatasetInvalid" and "train.jsonl line 1" in termination["message"]
