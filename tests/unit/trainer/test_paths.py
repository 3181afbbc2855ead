"""Object keys to local paths (core/paths.py, s3_uri.local_path), the model manifest (core/manifest.py) and the
adapters sidecar's check of a desired entry (serving/adapters/sync.refusal): every key shape that could leave
its folder is refused with the key and the prefix named, before anything is written.

The one stand-in here is the S3 listing in `test_download_refuses_a_listing_with_escaping_keys`: a real boto3
client whose `list_objects_v2` answer is stubbed (botocore's Stubber) with the keys AWS S3 stores and lists
verbatim, because the local S3 server refuses to store them. Everything about real storage is tested against
the real server in tests/trainer/test_fetch.py and tests/serve/test_adapter_fetch.py.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from finetune_trainer.core import manifest
from finetune_trainer.core.errors import ModelInvalid, UnsafeObjectKey, UserError
from finetune_trainer.core.paths import inside, relative_path
from finetune_trainer.core.s3_uri import S3Uri, local_path, relative_key
from finetune_trainer.serving.adapters.sync import Wanted, parse_desired, refusal

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


def _folder(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, list[Path]]:
    folder = tmp_path / "model"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder, sorted(p for p in folder.rglob("*") if p.is_file())


def test_manifest_names_every_file_with_size_and_sha256_and_checks_them(tmp_path: Path) -> None:
    folder, files = _folder(tmp_path, {"adapter_config.json": b"{}", "tok/t.json": b"abc"})
    document = json.loads(manifest.describe(folder, files))
    assert document["version"] == 1 and sorted(document["files"]) == ["adapter_config.json", "tok/t.json"]
    assert document["files"]["tok/t.json"] == {
        "size": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    entries = manifest.parse(manifest.describe(folder, files), PREFIX)
    manifest.check_listing(entries, {"adapter_config.json": 2, "tok/t.json": 3}, PREFIX)
    manifest.check_files(entries, folder, PREFIX)
    cases = {
        "extra": ({"adapter_config.json": 2, "tok/t.json": 3, "planted.py": 9}, "not in its manifest: planted.py"),
        "missing": ({"adapter_config.json": 2}, "missing: tok/t.json"),
        "resized": ({"adapter_config.json": 2, "tok/t.json": 4}, "another size than its manifest says: tok/t.json"),
    }
    for listed, message in cases.values():
        with pytest.raises(ModelInvalid, match=message):
            manifest.check_listing(entries, listed, PREFIX)
    (folder / "tok" / "t.json").write_bytes(b"abd")  # same size, other content
    with pytest.raises(ModelInvalid, match=r"differ from its _MANIFEST\.json: tok/t\.json"):
        manifest.check_files(entries, folder, PREFIX)


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b'{"version": 2, "files": {}}',
        b'{"version": 1, "files": []}',
        b'{"version": 1, "files": {"a": {"size": -1, "sha256": "' + b"0" * 64 + b'"}}}',
        b'{"version": 1, "files": {"a": {"size": 1}}}',
    ],
)
def test_a_malformed_manifest_is_model_invalid(document: bytes) -> None:
    with pytest.raises(ModelInvalid, match="malformed manifest"):
        manifest.parse(document, PREFIX)


def test_a_manifest_naming_an_escaping_file_is_refused() -> None:
    document = json.dumps({"version": 1, "files": {"../x": {"size": 1, "sha256": "0" * 64}}}).encode()
    with pytest.raises(UnsafeObjectKey, match=r"'\.\.' segment"):
        manifest.parse(document, PREFIX)


def _wanted(
    name: str = "bot", run: int = 2, uri: str = "s3://art/team-a/bot/run-2/model/", job: str = "team-a/bot"
) -> Wanted:
    return Wanted(name=name, run=run, uri=uri, job=job)


def test_the_sidecar_fetches_only_the_operator_shape_of_an_entry() -> None:
    assert refusal(_wanted(), "team-a") is None
    assert refusal(_wanted(name="team-b/bot", job="team-b/bot", uri="s3://art/b/bot/run-2/model/"), "team-a") is None
    refused = {
        "local path": (_wanted(uri="/adapters/team-b-bot-1234/run-1/"), "only s3://"),
        "file uri": (_wanted(uri="file:///adapters/x/run-2/model/"), "only s3://"),
        "other run": (_wanted(uri="s3://art/team-a/bot/run-3/model/"), "not the model folder of run 2"),
        "not the model": (_wanted(uri="s3://art/team-a/bot/run-2/"), "not the model folder of run 2"),
        "parent": (_wanted(uri="s3://art/team-b/../team-a/bot/run-2/model/"), "'..' segment"),
        "dot": (_wanted(uri="s3://art/./bot/run-2/model/"), "'.' or '..' segment"),
        "double slash": (_wanted(uri="s3://art//bot/run-2/model/"), "empty"),
        "no trailing slash": (_wanted(uri="s3://art/team-a/bot/run-2/model"), "trailing"),
        "backslash": (_wanted(uri="s3://art/a\\b/run-2/model/"), "backslash"),
        "no bucket": (_wanted(uri="s3:///run-2/model/"), "no bucket"),
        "name of another job": (_wanted(name="team-b/bot"), "not that of its FineTuneJob"),
        "job from another namespace without its prefix": (_wanted(job="team-b/bot"), "not that of its FineTuneJob"),
        "no job": (_wanted(job="bot"), "NAMESPACE/NAME"),
    }
    for wanted, message in refused.values():
        why = refusal(wanted, "team-a")
        assert why is not None and message in why, (wanted, why)


def test_the_desired_list_needs_the_job_of_each_entry() -> None:
    entry = {"name": "bot", "finetuneJob": "team-a/bot", "run": 1, "uri": "s3://a/bot/run-1/model/", "rank": 8}
    assert parse_desired({"adapters": [entry]}) == [_wanted(run=1, uri="s3://a/bot/run-1/model/")]
    with pytest.raises(ValueError, match=r"adapters\[0\] is malformed"):
        parse_desired({"adapters": [{k: v for k, v in entry.items() if k != "finetuneJob"}]})
