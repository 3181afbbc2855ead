"""The server as the pod runs it: the CLI reads serve.json, fetches base model and adapter from a real S3
server, serves, and exits cleanly on SIGTERM; a broken serve.json or a missing model exits 42."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.serve.conftest import MODEL_NAME, settings_for
from tests.serve.server import RunningServer, wait_ready
from tests.serve.tiny_models import write_serve_json
from tests.support.ports import free_port

PROMPT = "kubernetes operators"


def upload(bucket: Any, folder: Path, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            bucket.client.upload_file(str(path), bucket.name, prefix + path.relative_to(folder).as_posix())
    return bucket.uri(prefix)


def expected_text(client: Any) -> str:
    text: str = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    return text


@pytest.mark.s3
def test_app_loads_base_and_adapter_from_s3(
    s3_bucket: Any, tiny_lm_dir: Path, tiny_adapter_dir: Path, client: Any, tmp_path: Path
) -> None:
    from finetune_trainer.serving.server.app import create_app

    base_uri = upload(s3_bucket, tiny_lm_dir, "models/tiny/")
    model_uri = upload(s3_bucket, tiny_adapter_dir, "team-a/support-bot/run-2/model/")
    app = create_app(settings_for(model_uri, base_uri, work_dir=tmp_path / "work"))
    with RunningServer(app) as server:
        assert wait_ready(server.url).status_code == 200
        from_s3 = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        assert expected_text(from_s3) == expected_text(client)  # same merged adapter as the local load
    assert (tmp_path / "work" / "model" / "adapter_config.json").is_file()
    assert (tmp_path / "work" / "base" / "config.json").is_file()


@pytest.mark.s3
def test_cli_serves_from_s3_and_stops_on_sigterm(
    s3_bucket: Any, tiny_lm_dir: Path, tiny_adapter_dir: Path, client: Any, tmp_path: Path
) -> None:
    config = write_serve_json(
        tmp_path / "serve.json",
        servedModelName=MODEL_NAME,
        task="causal-lm",
        baseModelUri=upload(s3_bucket, tiny_lm_dir, "models/tiny/"),
        modelUri=upload(s3_bucket, tiny_adapter_dir, "run-2/model/"),
        run=2,
        maxConcurrency=4,
    )
    port = free_port()
    env = {
        **os.environ,
        "FTO_WORK_DIR": str(tmp_path / "work"),
        "FTO_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "FTO_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    code = "import sys; from finetune_trainer.serving.server.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180  # the child imports torch: allow a busy machine its time
        while True:
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(url + "/readyz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        served = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert expected_text(served) == expected_text(client)
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(60)
    assert returncode == 0
    assert not (tmp_path / "termination-log").exists()


def test_cli_rejects_a_serve_json_with_unknown_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.serving.server.cli import main

    config = write_serve_json(tmp_path / "serve.json", servedModelName="m", modelUri="s3://b/m/", modelURI="typo")
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert main(["serve", "--config", str(config)]) == 42
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["code"] == "ConfigInvalid" and "modelURI" in message["message"]


def test_cli_rejects_a_bad_thread_override_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.serving.server.cli import main

    config = write_serve_json(tmp_path / "serve.json", servedModelName="m", modelUri="s3://b/m/")
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("FTO_TORCH_THREADS", "many")
    assert main(["serve", "--config", str(config)]) == 42
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["code"] == "ConfigInvalid" and "FTO_TORCH_THREADS" in message["message"]


@pytest.mark.s3
def test_cli_exits_42_when_the_model_is_missing(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer.serving.server.cli import main

    config = write_serve_json(tmp_path / "serve.json", servedModelName="m", modelUri=s3_bucket.uri("nothing/"))
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("FTO_WORK_DIR", str(tmp_path / "work"))
    assert main(["--config", str(config), "--host", "127.0.0.1", "--port", str(free_port())]) == 42
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["code"] == "StorageNotFound" and "nothing/" in message["message"]
