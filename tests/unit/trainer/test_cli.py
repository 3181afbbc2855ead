"""The command line: `serve` goes to the server's own parser; `train` always leaves a termination message."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_trainer.cli import main
from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE


@pytest.fixture(autouse=True)
def keep_sigterm_handler() -> Iterator[None]:
    """`train` installs its SIGTERM handler; put pytest's back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_serve_is_dispatched_with_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(["serve", "--help"])
    assert leaving.value.code == 0
    assert "--port" in capsys.readouterr().out  # the server's parser answered, not ours


def test_missing_or_broken_config_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(termination))
    assert main(["train", "--config", str(tmp_path / "absent.json")]) == USER_ERROR_EXIT_CODE
    assert json.loads(termination.read_text())["code"] == "ConfigInvalid"
    broken = tmp_path / "config.json"
    broken.write_text('{"job": ')
    assert main(["train", "--config", str(broken)]) == USER_ERROR_EXIT_CODE
    message = json.loads(termination.read_text())["message"]
    assert "invalid JSON" in message and "line 1" in message


def test_a_bad_thread_override_is_a_user_error_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.trainer.builders import trainer_config

    termination = tmp_path / "termination-log"
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(termination))
    monkeypatch.setenv("FTO_TORCH_THREADS", "lots")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(trainer_config("bucket", "s3://bucket/models/x/", "s3://bucket/data/train.jsonl")))
    assert main(["train", "--config", str(config)]) == USER_ERROR_EXIT_CODE
    written = json.loads(termination.read_text())
    assert written["code"] == "ConfigInvalid" and "FTO_TORCH_THREADS" in written["message"]


def test_fetch_pairs_each_uri_with_a_dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(termination))
    one_dest = ["fetch", "--uri", "s3://b/base/", "--uri", "s3://b/adapter/", "--dest", str(tmp_path / "base")]
    assert main(one_dest) == USER_ERROR_EXIT_CODE
    written = json.loads(termination.read_text())
    assert (
        written["code"] == "ConfigInvalid" and "one --dest for each --uri (got 2 --uri, 1 --dest)" in written["message"]
    )
    assert main(["fetch", "--uri", "/models/base", "--dest", str(tmp_path / "base")]) == USER_ERROR_EXIT_CODE
    assert "not an s3:// URI" in json.loads(termination.read_text())["message"]
    assert not (tmp_path / "base").exists()
