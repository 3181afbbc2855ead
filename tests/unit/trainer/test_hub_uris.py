"""The pure parts of hf:// sources: URI parsing, error classification, and which files are which split."""

from __future__ import annotations

import httpx
import pytest
from finetune_trainer.core.errors import (
    ConfigInvalid,
    DatasetInvalid,
    HubAccessDenied,
    HubUnavailable,
    ModelNotFound,
)
from finetune_trainer.core.hub import HubRef, classify, parse
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.training.hub_sources import card_data_files, dataset_uris
from huggingface_hub.errors import HfHubHTTPError


def test_hub_uris_parse_to_kind_repo_and_path() -> None:
    assert parse("hf://acme/tiny", "f") == HubRef("model", "acme/tiny", "")
    assert parse("hf://datasets/acme/chat/data/train-", "f") == HubRef("dataset", "acme/chat", "data/train-")
    assert parse("hf://datasets/acme/chat/data/", "f") == HubRef("dataset", "acme/chat", "data/")
    for bad in ("hf://acme", "hf://acme//x", "hf://datasets/acme/chat/../x", "hf://acme/tiny/sub", "s3://b/k"):
        with pytest.raises(ConfigInvalid, match="f: "):
            parse(bad, "f")


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx.Request("GET", "http://hub/api/models/acme/tiny")
    return HfHubHTTPError(f"{status}", response=httpx.Response(status, request=request))


def test_statuses_map_to_user_errors_or_a_retryable_outage() -> None:
    ref = HubRef("model", "acme/tiny", "")
    assert isinstance(classify(_http_error(401), ref, "main"), HubAccessDenied)
    assert isinstance(classify(_http_error(403), ref, "main"), HubAccessDenied)
    assert isinstance(classify(_http_error(503), ref, "main"), HubUnavailable)
    assert isinstance(classify(_http_error(404), ref, "main"), ModelNotFound)
    assert isinstance(classify(ConnectionRefusedError("refused"), ref, "main"), HubUnavailable)


CARD = """---
configs:
- config_name: other
  data_files: other/*.jsonl
- config_name: default
  data_files:
  - split: train
    path: [data/train-*]
  - split: test
    path: data/test.parquet
---
text
"""


def test_the_cards_default_config_decides_the_splits() -> None:
    assert card_data_files(CARD, "w/") == {"train": ["data/train-*"], "test": ["data/test.parquet"]}
    assert card_data_files("# no header", "w/") is None
    assert card_data_files("---\nconfigs:\n- data_files: d/*.csv\n---\n", "w/") == {"train": ["d/*.csv"]}
    with pytest.raises(DatasetInvalid, match="split 'extra'"):
        card_data_files("---\nconfigs:\n- data_files:\n  - {split: extra, path: x}\n---\n", "w/")


def test_split_files_become_one_uri_each_or_are_refused() -> None:
    folder = S3Uri("b", "cache/c1/")
    paths = ["README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/test.parquet"]
    assert dataset_uris(folder, "", paths, CARD, "w/") == {
        "train": "s3://b/cache/c1/data/train-0000",
        "test": "s3://b/cache/c1/data/test.parquet",
    }
    assert dataset_uris(folder, "", paths, None, "w/") == {"train": "s3://b/cache/c1/"}
    assert dataset_uris(folder, "data/", paths, CARD, "w/") == {"train": "s3://b/cache/c1/data/"}
    mixed = ["data/a-train.parquet", "data/a-train2.parquet", "data/a-train-extra.parquet"]
    card = (
        "---\nconfigs:\n- data_files:\n  - {split: train, path: [data/a-train.parquet, data/a-train2.parquet]}\n---\n"
    )
    with pytest.raises(DatasetInvalid, match="share no key prefix"):
        dataset_uris(folder, "", mixed, card, "w/")
