"""What a shared server's adapters sidecar must do, pure: desired list + what the engine serves -> actions.

Why pure and level-triggered: the engine's own /v1/models is the truth of what it serves (a restarted engine
container has lost every adapter, and the sidecar must notice without remembering anything); the desired
list is the operator's ConfigMap. Each pass compares the two by folder: an adapter is served right when the
engine reports it loaded from the folder of its desired run. Unloads come first (they free the engine's
adapter slots), then loads; a name the engine already serves is replaced in place (`load_inplace`), never
unloaded first, so requests naming it keep being answered during a swap.

What the sidecar fetches is only what the operator's list names, and only in the one shape the operator writes:
`refusal` checks each entry (an s3:// URI ending in the entry's own `run-N/model/`, no unsafe segment, the
adapter name that of the entry's FineTuneJob as seen from this server's namespace); a refused entry is reported
under its name and never fetched. The operator derives that URI from the job's own `spec.output.uri` and
nothing else (finetune_operator/modelserver/plan.py); the sidecar cannot read the job, so it checks the shape.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any


@dataclass(frozen=True)
class Wanted:
    """One entry of the desired list (adapters.json, written by the operator)."""

    name: str
    run: int
    uri: str
    job: str
    """NAMESPACE/NAME of the FineTuneJob whose run this is (the entry's `finetuneJob`)."""


def parse_desired(document: Mapping[str, Any]) -> list[Wanted]:
    """adapters.json -> entries; a malformed entry is an error naming it (the operator writes this file)."""
    adapters = document.get("adapters")
    if not isinstance(adapters, list):
        raise ValueError("adapters.json: 'adapters' must be a list")
    wanted = []
    for index, entry in enumerate(adapters):
        try:
            wanted.append(Wanted(str(entry["name"]), int(entry["run"]), str(entry["uri"]), str(entry["finetuneJob"])))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"adapters.json: adapters[{index}] is malformed: {error}") from error
    return wanted


_SEGMENT_UNSAFE = ("", ".", "..")


def refusal(wanted: Wanted, namespace: str) -> str | None:
    """Why the sidecar (in `namespace`, its server's) must not fetch this entry, or None when it may.

    Only the shape the operator writes is fetched: `s3://BUCKET/<job's output prefix>run-<run>/model/`, with no
    empty, `.` or `..` segment and no backslash or control character in the key, for an adapter named after its
    FineTuneJob (`NAME` from this namespace, `NAMESPACE/NAME` from another). A local path is never copied: the
    pod's files belong to every tenant of the server.
    """
    job_namespace, _, job_name = wanted.job.partition("/")
    if not job_namespace or not job_name or "/" in job_name:
        return f"finetuneJob {wanted.job!r} is not NAMESPACE/NAME"
    expected = job_name if job_namespace == namespace else f"{job_namespace}/{job_name}"
    if wanted.name != expected:
        return f"adapter name {wanted.name!r} is not that of its FineTuneJob {wanted.job} ({expected!r})"
    if not wanted.uri.startswith("s3://"):
        return f"uri {wanted.uri!r}: only s3:// model folders are fetched"
    bucket, _, key = wanted.uri[len("s3://") :].partition("/")
    if not bucket or not key:
        return f"uri {wanted.uri!r}: no bucket or key"
    if any(ord(c) < 32 or c in "\\\x7f" for c in key):
        return f"uri {wanted.uri!r}: a backslash or control character in the key"
    segments = key.split("/")
    if any(s in _SEGMENT_UNSAFE for s in segments[:-1]) or segments[-1] != "":
        return f"uri {wanted.uri!r}: an empty, '.' or '..' segment, or no trailing '/'"
    if segments[-3:-1] != [f"run-{wanted.run}", "model"]:
        return f"uri {wanted.uri!r}: not the model folder of run {wanted.run} (<output>run-{wanted.run}/model/)"
    return None


def folder_of(dest: str, name: str, run: int) -> str:
    """Where run `run` of adapter `name` lives in the pod (a name may hold '/': NAMESPACE/NAME)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:60]
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return str(PurePosixPath(dest) / f"{slug}-{digest}" / f"run-{run}")


def served_of(models: Mapping[str, Any]) -> dict[str, str]:
    """/v1/models of the engine -> {adapter name: folder}: the cards with a parent (vLLM's and ours)."""
    served = {}
    for card in models.get("data") or []:
        if card.get("parent") and card.get("root"):
            served[str(card["id"])] = str(card["root"])
    return served


@dataclass(frozen=True)
class Load:
    name: str
    run: int
    uri: str
    folder: str
    inplace: bool  # the engine serves this name already (an older run): replace it without a gap


@dataclass(frozen=True)
class Unload:
    name: str


Action = Load | Unload


def plan_sync(desired: Sequence[Wanted], served: Mapping[str, str], dest: str) -> list[Action]:
    """The engine calls that turn `served` into `desired`: unloads, then loads."""
    wanted = {w.name: w for w in desired}
    actions: list[Action] = [Unload(name) for name in sorted(served) if name not in wanted]
    for name in sorted(wanted):
        w = wanted[name]
        folder = folder_of(dest, name, w.run)
        if served.get(name) != folder:
            actions.append(Load(name, w.run, w.uri, folder, inplace=name in served))
    return actions


def report(
    desired: Sequence[Wanted], served: Mapping[str, str], dest: str, errors: Mapping[str, str]
) -> dict[str, Any]:
    """The sidecar's entry in the report ConfigMap: what the engine serves (name, run, uri) and what failed."""
    by_folder = {folder_of(dest, w.name, w.run): w for w in desired}
    adapters = []
    for name, folder in sorted(served.items()):
        w = by_folder.get(folder)
        if w is not None and w.name == name:
            adapters.append({"name": name, "run": w.run, "uri": w.uri})
        else:  # served, but not (or no longer) desired: about to be unloaded or replaced
            match = re.search(r"/run-(\d+)$", folder)
            adapters.append({"name": name, "run": int(match.group(1)) if match else 0, "uri": ""})
    return {"adapters": adapters, "errors": dict(sorted(errors.items()))}


def stale_folders(existing: Sequence[str], served: Mapping[str, str]) -> list[str]:
    """Run folders on disk that no served adapter comes from (vLLM may re-read a served one from disk)."""
    keep = set(served.values())
    return sorted(f for f in existing if f not in keep)
