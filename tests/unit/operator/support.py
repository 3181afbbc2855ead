"""Helpers of the operator unit tests: sample specs, and golden-file comparison (UPDATE_GOLDEN=1 rewrites)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml
from finetune_operator.api.finetunejob import FineTuneJobSpec, parse_spec
from finetune_operator.api.objects import Owner

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = Path(__file__).parents[3] / "examples"
OWNER = Owner("team-a", "support-bot", "0b9b6a8e-1111-4222-8333-444455556666")


def minimal(**overrides: Any) -> dict[str, Any]:
    """A minimal valid spec as a user writes it, with top-level sections replaced by `overrides`."""
    raw: dict[str, Any] = {
        "baseModel": {"uri": "s3://models/tiny/"},
        "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "chat"},
        "output": {"uri": "s3://artifacts/team-a/support-bot/"},
        "storage": {"credentialsSecret": "s3-creds"},
    }
    raw.update(overrides)
    return raw


def spec(**overrides: Any) -> FineTuneJobSpec:
    return parse_spec(minimal(**overrides))


def example(name: str) -> dict[str, Any]:
    """The example's FineTuneJob; for a FineTuneSweep, its template as a FineTuneJob (what each trial starts from)."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if d]
    body: dict[str, Any] = next(d for d in docs if d.get("kind") in ("FineTuneJob", "FineTuneSweep"))
    if body["kind"] == "FineTuneSweep":
        return {**body, "kind": "FineTuneJob", "spec": body["spec"]["template"]}
    return body


def _readable(value: Any) -> Any:
    """ConfigMap JSON payloads shown as YAML structure (reviewable diffs); everything else unchanged."""
    if isinstance(value, list):
        return [_readable(v) for v in value]
    if isinstance(value, dict) and value.get("kind") == "ConfigMap":
        data = {k: json.loads(v) if k.endswith(".json") else v for k, v in value["data"].items()}
        return {**value, "data": data}
    return value


def assert_golden(relative: str, value: Any) -> None:
    """Compare `value` as YAML with golden/<relative>; UPDATE_GOLDEN=1 writes the file instead.

    ConfigMaps' JSON payloads are stored decoded, so a golden diff reads like a config diff."""
    path = GOLDEN / relative
    text = yaml.safe_dump(_readable(value), sort_keys=False, width=120)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review the new file"
    assert text == path.read_text(), f"{relative} differs from its golden file (UPDATE_GOLDEN=1 to accept)"


def new_job_body(raw_spec: dict[str, Any]) -> dict[str, Any]:
    """OWNER's FineTuneJob as the API server returns it right after its create: no status yet."""
    meta = {"namespace": OWNER.namespace, "name": OWNER.name, "uid": OWNER.uid, "resourceVersion": "5", "generation": 1}
    return {"metadata": meta, "spec": raw_spec}


class RecordingKube:
    """Stands in for the API server in a reconcile pass's unit tests: keeps the FineTuneJob's body as the server
    would (status patches applied, resourceVersion checked and bumped) and records the status patches, the
    creates and the reads. `existing`: kinds whose create finds the object already made (ours: None)."""

    def __init__(self, body: dict[str, Any], existing: tuple[str, ...] = ()) -> None:
        self.body, self.existing = body, existing
        self.patches: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.reads: list[tuple[str, str]] = []

    def exists_metadata(self, *_: Any) -> bool:
        return True

    def get(self, _api_version: str, kind: str, _namespace: str, name: str) -> None:
        self.reads.append((kind, name))
        return None

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        if manifest["kind"] in self.existing:
            return None
        self.created.append(manifest["kind"])
        return {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "1", "uid": "child"}}

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any], version: str) -> dict[str, Any]:
        assert version == self.body["metadata"]["resourceVersion"]
        self.patches.append(patch)
        status = {**(self.body.get("status") or {}), **patch}
        meta = {**self.body["metadata"], "resourceVersion": str(int(version) + 1)}
        self.body = {**self.body, "metadata": meta, "status": {k: v for k, v in status.items() if v is not None}}
        return copy.deepcopy(self.body)

    def post_event(self, *_: Any) -> None:
        return None
