"""Naming of uploaded files in object storage: ids, object keys and the `s3://` URI a FineTuneJob names.

Why pure and apart: the id is the object, so nothing is kept in memory and an API pod killed at any time loses
nothing; every route and the jobs side (a job's `training_file` becomes a FineTuneJob's `dataset` URI) derive
keys from ids here, in one place that refuses anything that could leave the namespace's folder. An id is
`file-` + 12 hex digits of the upload's time in milliseconds + 12 random hex digits: unique, not guessable
across tenants (which would not matter anyway: keys are per namespace), and sorting keys sorts by creation, so a
listing needs no index. Files are JSONL (what OpenAI's fine-tuning takes), so the key ends in `.jsonl` and the
trainer's readers detect the format from it.
"""

from __future__ import annotations

import re
import secrets
import time

from finetune_trainer.finetuning_api.config import ApiConfig

FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
FOLDER = "files"
SUFFIX = ".jsonl"


class BadName(ValueError):
    """A namespace or file id that cannot name an object (the routes answer 400 or 404 with its message)."""


def new_file_id(now_ms: int | None = None, rand: str | None = None) -> str:
    """A fresh id: creation time (ms) then randomness, both hex, so key order is creation order."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    tail = secrets.token_hex(6) if rand is None else rand
    file_id = f"file-{ms:012x}{tail}"
    check_file_id(file_id)
    return file_id


def check_namespace(namespace: str) -> str:
    """A Kubernetes namespace name (a DNS label): anything else could not be a namespace and could escape a key."""
    if not DNS_LABEL.match(namespace or ""):
        raise BadName(f"{namespace!r} is not a namespace name (lowercase letters, digits and '-', at most 63)")
    return namespace


def check_file_id(file_id: str) -> str:
    if not FILE_ID.match(file_id or ""):
        raise BadName(f"{file_id!r} is not a file id (file- and 24 hex digits)")
    return file_id


def created_at(file_id: str) -> int:
    """The creation time (Unix seconds) the id carries."""
    return int(check_file_id(file_id)[5:17], 16) // 1000


def folder(namespace: str) -> str:
    """The key prefix of a namespace's files (`<namespace>/files/`)."""
    return f"{check_namespace(namespace)}/{FOLDER}/"


def object_key(namespace: str, file_id: str) -> str:
    """The key of one file's bytes: `<namespace>/files/<file_id>.jsonl`."""
    return folder(namespace) + check_file_id(file_id) + SUFFIX


def file_id_of_key(namespace: str, key: str) -> str | None:
    """The id a listed key names, or None for a key that is not one of this namespace's files."""
    prefix = folder(namespace)
    if not key.startswith(prefix) or not key.endswith(SUFFIX):
        return None
    candidate = key[len(prefix) : -len(SUFFIX)]
    return candidate if FILE_ID.match(candidate) else None


def file_uri(config: ApiConfig, namespace: str, file_id: str) -> str:
    """What a FineTuneJob's dataset URI names for this file: `s3://<bucket>/<namespace>/files/<id>.jsonl`."""
    return f"s3://{config.bucket}/{object_key(namespace, file_id)}"
