"""Object keys to local paths (core/paths.py, s3_uri.local_path, Storage.download): every key shape that could
leave its folder is refused with the key and the prefix named, before anything is written.

The one stand-in here is the S3 listing in `test_download_refuses_a_listing_with_escaping_keys`: a real boto3
client whose `list_objects_v2` answer is stubbed (botocore's Stubber) with the keys AWS S3 stores and lists
verbatim, because the local S3 server refuses to store them. The real server's side is tests/trainer/test_fetch.py.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from finetune_trainer.core.errors import UnsafeObjectKey, UserError
from finetune_trainer.core.paths import inside, relative_path
from finetune_trainer.core.s3_uri import S3Uri, local_path, relative_key

PREFIX = "s3://b/out/run-1/model/"

BAD_RELATIVE = {
    "parent": "../other-tenant/run-1/adapter_model.safetensors",
    "parent-inside": "tokenizer/../../x",
    "parent-last": "tokenizer/..",
    "only-parent": "..",
    "dot": "./config.json",
    "dot-inside": "tokenizer/./x",
    "empty-segment": "tokenizer//x",
    "absolute": "/etc/passwd",
    "double-slash-absolute": "//tmp/x",
    "trailing-slash": "tokenizer/",
    "empty": "",
    "backslash": "..\\..\\x",
    "nul": "config.json\x00.txt",
    "newline": "config\n.json",
    "del": "config\x7f.json",
}


@pytest.mark.parametrize("relative", BAD_RELATIVE.values(), ids=BAD_RELATIVE.keys())
def test_every_unsafe_key_shape_is_refused_naming_key_and_prefix(relative: str) -> None:
    key = "out/run-1/model/" + relative
    with pytest.raises(UnsafeObjectKey) as refused:
        relative_path(relative, key=key, prefix=PREFIX)
    assert repr(key) in str(refused.value) and PREFIX in str(refused.value)
    assert isinstance(refused.value, UserError) and refused.value.exit_code == 42


@pytest.mark.parametrize(
    "relative", ["config.json", "tokenizer/chat_template.jinja", ".hidden", "a..b/c", "x/...", "spaces in name"]
)
def test_ordinary_keys_become_relative_paths(relative: str) -> None:
    assert relative_path(relative, key=relative, prefix=PREFIX) == PurePosixPath(relative)


def test_relative_key_refuses_escaping_keys_under_a_folder_a_file_and_a_key_prefix() -> None:
    folder, file, shards = S3Uri.parse(PREFIX), S3Uri.parse("s3://b/data/../x"), S3Uri.parse("s3://b/data/train-")
    assert relative_key(S3Uri.parse(PREFIX + "a/b.json"), folder) == "a/b.json"
    assert relative_key(S3Uri.parse("s3://b/data/train-0.parquet"), shards) == "train-0.parquet"
    for key, location in [
        ("s3://b/out/run-1/model/../../../tmp/x", folder),
        ("s3://b/out/run-1/model//etc/passwd", folder),
        ("s3://b/out/run-1/model/./x", folder),
        ("s3://b/data/train-/../../x", shards),
    ]:
        with pytest.raises(UnsafeObjectKey, match="refused"):
            relative_key(S3Uri.parse(key), location)
    with pytest.raises(UnsafeObjectKey):  # a file URI whose own name is '..'
        relative_key(S3Uri.parse("s3://b/data/.."), S3Uri.parse("s3://b/data/.."))
    assert relative_key(file, file) == "x"


def test_inside_refuses_a_symbolic_link_out_of_the_folder(tmp_path: Path) -> None:
    folder, outside = tmp_path / "dest", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (folder / "link").symlink_to(outside)
    assert inside(folder, PurePosixPath("a/b"), what="k") == folder / "a" / "b"
    with pytest.raises(UnsafeObjectKey, match="outside"):
        inside(folder, PurePosixPath("link/x"), what="object key 'link/x'")
    with pytest.raises(UnsafeObjectKey):
        inside(folder, PurePosixPath("/etc/passwd"), what="k")
    with pytest.raises(UnsafeObjectKey):
        local_path(S3Uri.parse(PREFIX + "link/y"), S3Uri.parse(PREFIX), folder)


def _listing(keys: list[str]) -> dict[str, Any]:
    contents = [{"Key": k, "Size": 3, "ETag": '"e"', "LastModified": "2025-01-01T00:00:00Z"} for k in keys]
    return {"IsTruncated": False, "Contents": contents, "KeyCount": len(keys), "Name": "b", "Prefix": "out/"}


ESCAPING = [
    "out/run-1/model/../../../../tmp/planted",  # two levels up and beyond: into the temporary folder
    "out/run-1/model//etc/planted",  # an empty segment: an absolute path once joined by string
    "out/run-1/model/../../team-b-bot-1234abcd/run-1/adapter_model.safetensors",  # another tenant's folder
    "out/run-1/model/./config.json",
]


@pytest.mark.parametrize("bad", ESCAPING)
def test_download_refuses_a_listing_with_escaping_keys(
    bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 listing as AWS returns it (keys verbatim) fed to Storage.download: refused before any download."""
    import boto3
    from botocore.stub import Stubber
    from finetune_trainer.core.storage import Storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    client = boto3.session.Session().client("s3", region_name="us-east-1")
    stub = Stubber(client)
    keys = ["out/run-1/model/adapter_config.json", bad]
    stub.add_response("list_objects_v2", _listing(keys), {"Bucket": "b", "Prefix": "out/run-1/model/"})
    dest = tmp_path / "work" / "adapters" / "team-a-bot" / "run-1"
    with stub, pytest.raises(UnsafeObjectKey) as refused:
        Storage(client).download(S3Uri.parse(PREFIX), dest)
    assert repr(bad) in str(refused.value) and PREFIX in str(refused.value)
    assert not dest.exists() and [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing written
