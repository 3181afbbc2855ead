"""The key rules of a model server (finetune_trainer.serving.auth), from tables: the admin key reaches every model,
a tenant key only the entries that carry its digest, anything else is refused; and the file watcher that reloads
the map when the sidecar rewrites its copy of adapters.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from finetune_trainer.serving.auth import KeyMap, bearer_of, decide, key_sha256
from finetune_trainer.serving.keyfile import WatchedKeys

ADMIN = "sk-admin-0123"
TEAM_A, TEAM_B = "sk-team-a", "sk-team-b"


def _entry(name: str, key: str | None = None, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {"name": name, "finetuneJob": f"ns/{name}", "run": 1, "uri": "s3://b/x/run-1/model/"}
    if key is not None:
        entry["keySha256"] = key_sha256(key)
    return {**entry, **extra}


DOCUMENT = {
    "server": "ns/shared",
    "adapters": [
        _entry("alpha", TEAM_A),
        _entry("beta", TEAM_A),
        _entry("team-b/gamma", TEAM_B),
        _entry("legacy"),  # no tenant key: the admin key alone reaches it
    ],
}
KEYS = KeyMap.from_adapters(ADMIN, DOCUMENT, reserved={"shared"})


@pytest.mark.parametrize(
    ("bearer", "model", "expected"),
    [
        (ADMIN, "shared", "allowed"),
        (ADMIN, "alpha", "allowed"),
        (ADMIN, "team-b/gamma", "allowed"),
        (ADMIN, "legacy", "allowed"),
        (ADMIN, "never-heard-of", "allowed"),  # the server then answers 404 for a model it does not serve
        (TEAM_A, "alpha", "allowed"),
        (TEAM_A, "beta", "allowed"),
        (TEAM_A, "team-b/gamma", "not_found"),
        (TEAM_A, "legacy", "not_found"),
        (TEAM_A, "shared", "not_found"),  # the base model is the server's, not a tenant's
        (TEAM_B, "team-b/gamma", "allowed"),
        (TEAM_B, "alpha", "not_found"),
        (None, "alpha", "unauthenticated"),
        ("", "alpha", "unauthenticated"),
        ("sk-wrong", "alpha", "unauthenticated"),
        (key_sha256(TEAM_A), "alpha", "unauthenticated"),  # the digest itself is not a key
        (ADMIN + "x", "alpha", "unauthenticated"),
    ],
)
def test_decide(bearer: str | None, model: str, expected: str) -> None:
    assert decide(KEYS, bearer, model) == expected


def test_a_server_without_an_admin_key_is_open_to_everyone() -> None:
    keys = KeyMap.from_adapters(None, DOCUMENT)
    assert keys.open and decide(keys, None, "alpha") == "allowed" and decide(keys, TEAM_B, "alpha") == "allowed"


def test_a_tenant_key_lists_only_its_own_models_and_shared_digests_unite() -> None:
    access = KEYS.authenticate(TEAM_A)
    assert access is not None and access.models == frozenset({"alpha", "beta"}) and not access.admin
    admin = KEYS.authenticate(ADMIN)
    assert admin is not None and admin.admin


def test_bad_entries_grant_nothing_and_are_named() -> None:
    document = {
        "adapters": [
            _entry("ok", TEAM_A),
            {**_entry("short"), "keySha256": "abc"},
            {**_entry("upper"), "keySha256": key_sha256(TEAM_B).upper()},  # case does not matter
            {"keySha256": key_sha256(TEAM_B)},
            {**_entry("shared"), "keySha256": key_sha256(TEAM_B)},
            {**_entry("keyless"), "keySha256": ""},  # no tenant key yet: the admin key alone, nothing to report
            "not an object",
        ]
    }
    keys = KeyMap.from_adapters(ADMIN, document, reserved={"shared"})
    assert decide(keys, TEAM_B, "upper") == "allowed" and decide(keys, TEAM_B, "shared") == "not_found"
    assert decide(keys, ADMIN, "keyless") == "allowed" and decide(keys, TEAM_A, "keyless") == "not_found"
    assert [p.split(":")[1].strip() for p in keys.problems] == [
        "adapters[1].keySha256",
        "adapters[3].name",
        "adapters[4].name",
    ]
    assert KeyMap.from_adapters(ADMIN, {"adapters": "x"}).problems  # named, and no tenant key at all
    with pytest.raises(ValueError, match=r"adapters\.json is not JSON"):
        KeyMap.from_adapters_text(ADMIN, "{")
    with pytest.raises(ValueError, match="not a JSON object"):
        KeyMap.from_adapters_text(ADMIN, "[]")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer k", "k"), ("bearer  k ", "k"), ("Basic k", None), ("Bearer ", None), ("", None), ("k", None)],
)
def test_bearer_of(header: str, expected: str | None) -> None:
    assert bearer_of(header) == expected


def test_the_watcher_follows_the_file_and_keeps_the_last_good_map(tmp_path: Path) -> None:
    path = tmp_path / ".adapters.json"
    watched = WatchedKeys(ADMIN, path, frozenset({"shared"}))
    assert decide(watched.current(), TEAM_A, "alpha") == "unauthenticated"  # no file yet: the admin key alone
    path.write_text(json.dumps(DOCUMENT))
    assert decide(watched.current(), TEAM_A, "alpha") == "allowed"
    # the tenant's entry goes: so does its key
    staging = tmp_path / "new"
    staging.write_text(json.dumps({"adapters": [_entry("team-b/gamma", TEAM_B)]}))
    staging.rename(path)
    assert decide(watched.current(), TEAM_A, "alpha") == "unauthenticated"
    assert decide(watched.current(), TEAM_B, "team-b/gamma") == "allowed"
    # a broken file keeps the last good map; the admin key works throughout
    path.write_text("{broken")
    os.utime(path, ns=(1, 1))
    assert decide(watched.current(), TEAM_B, "team-b/gamma") == "allowed"
    assert decide(watched.current(), ADMIN, "anything") == "allowed"
    path.unlink()
    assert decide(watched.current(), TEAM_B, "team-b/gamma") == "unauthenticated"


def test_a_server_of_one_model_reads_no_file(tmp_path: Path) -> None:
    path = tmp_path / ".adapters.json"
    path.write_text(json.dumps(DOCUMENT))
    assert decide(WatchedKeys(ADMIN, None).current(), TEAM_A, "alpha") == "unauthenticated"


def test_the_sidecar_writes_its_copy_of_the_list_atomically_and_only_when_it_changed(tmp_path: Path) -> None:
    from finetune_trainer.serving.adapters.cli import DESIRED_COPY, write_desired_copy

    path = tmp_path / "adapters" / DESIRED_COPY  # the folder may not exist yet
    text = json.dumps(DOCUMENT)
    write_desired_copy(path, text)
    assert path.read_text() == text and not list(path.parent.glob("*.new"))
    before = path.stat()
    write_desired_copy(path, text)
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns  # untouched
    write_desired_copy(path, "{}")
    assert path.read_text() == "{}" and path.stat().st_ino != before.st_ino  # a new file renamed into place
    watched = WatchedKeys(ADMIN, path)
    assert decide(watched.current(), TEAM_A, "alpha") == "unauthenticated"
