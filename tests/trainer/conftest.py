"""Fixtures for trainer tests against the real S3 server: offline HF, a tiny Llama folder, a runner.

`run_trainer` runs `python -m finetune_trainer train` in-process (fast: torch is already imported) and
returns the exit code with the decoded termination message; subprocess runs (SIGTERM, torchrun) use
`trainer_env` for the same environment.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.builders import build_tiny_llama, upload_folder


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach a model hub; each test has its own work dir and termination-log file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("FTO_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture
def tiny_llama_uri(s3_bucket: Any, tiny_llama_folder: Path) -> str:
    return upload_folder(s3_bucket.client, s3_bucket.name, tiny_llama_folder, "models/tiny-llama")


@dataclass(frozen=True)
class TrainerResult:
    exit_code: int
    termination: dict[str, Any]


@pytest.fixture
def run_trainer(tmp_path: Path) -> Callable[[dict[str, Any]], TrainerResult]:
    """Write the config, run one trainer attempt in this process, return its exit code and message."""
    from finetune_trainer.cli import run_train

    def run(config: dict[str, Any]) -> TrainerResult:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        previous = signal.getsignal(signal.SIGTERM)
        try:
            code = run_train(path)
        finally:
            signal.signal(signal.SIGTERM, previous)
        message = json.loads((tmp_path / "termination-log").read_text())
        return TrainerResult(code, message)

    return run


@pytest.fixture
def trainer_env(tmp_path: Path, s3_bucket: Any) -> Iterator[dict[str, str]]:
    """The environment for a trainer subprocess (the S3 variables are already set by s3_bucket)."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "trainer-image"), str(repo), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    yield env
