"""What a shared server's adapters sidecar must do, pure: desired list + what the engine serves -> actions.

Why pure and level-triggered: the engine's own /v1/models is the truth of what it serves (a restarted engine
container has lost every adapter, and the sidecar must notice without remembering anything); the desired
list is the operator's ConfigMap. Each pass compares the two by folder: an adapter is served right when the
engine reports it loaded from the folder of its desired run. Unloads come first (they free the engine's
adapter slots), then loads; a name the engine already serves is replaced in place (`load_inplace`), never
unloaded first, so requests naming it keep being answered during a swap.
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


def parse_desired(document: Mapping[str, Any]) -> list[Wanted]:
    """adapters.json -> entries; a malformed entry is an error naming it (the operator writes this file)."""
    adapters = document.get("adapters")
    if not isinstance(adapters, list):
        raise ValueError("adapters.json: 'adapters' must be a list")
    wanted = []
    for index, entry in enumerate(adapters):
        try:
            wanted.append(Wanted(str(entry["name"]), int(entry["run"]), str(entry["uri"])))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"adapters.json: adapters[{index}] is malformed: {error}") from error
    return wanted


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
