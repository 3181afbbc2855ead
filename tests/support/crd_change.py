"""The CRD-upgrade fault of a FineTuneJob burst: the CRD replaced by one with a new defaulted spec field once every
stored FineTuneJob was accepted, and what it cost (jobs failed ConfigInvalid: target 0).

One home for `bench/chaos.py --faults crd` (200 jobs, figures) and its smaller CI test
(tests/integration/test_crd_upgrade_kinds.py, 20 jobs). Why after every job was accepted: a FineTuneJob the operator
never accepted is a new generation, and one that shows a field the operator does not know is refused by name
(core/accepted_spec.py); the fault is the chart's documented upgrade order with jobs stored and running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.support.crds import CRDS, apply_crd, install_crd, with_spec_field

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
T = TypeVar("T")
FIELD = "chaosDefaultedField"  # a field neither the CRD nor the operator knows: a next version's new field
SCHEMA = {"type": "string", "default": "on", "description": "A chaos-test-only field with a default."}


def _retried(call: Callable[[], T], timeout: float = 30) -> T:
    """`call`, again while the API server answers 429: right after a CRD changes it answers "storage is
    (re)initializing" for a moment (more so under load)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Exception as error:
            if getattr(error, "status", None) != 429 or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _items(custom: Any, namespace: str) -> list[dict[str, Any]]:
    found = _retried(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
    items: list[dict[str, Any]] = found["items"]
    return items


def all_accepted(custom: Any, namespace: str, count: int) -> list[str] | None:
    """The names of the namespace's `count` FineTuneJobs once the operator has accepted each one's generation."""
    items = _items(custom, namespace)
    accepted = [
        i["metadata"]["name"]
        for i in items
        if (i.get("status") or {}).get("observedGeneration") == i["metadata"].get("generation")
        and (i.get("status") or {}).get("phase") != "Failed"
    ]
    return accepted if len(accepted) >= count else None


def change_crd(api_client: Any, custom: Any, namespace: str, names: list[str], crd: Path | None = None) -> None:
    """Apply the CRD (`crd`, default the repository's) with FIELD added, wait until the stored jobs read with
    its default, and touch each (a metadata change, no new generation) so the operator reads them now."""
    body = yaml.safe_load((crd or CRDS / "finetunejob.yaml").read_text())
    apply_crd(api_client, with_spec_field(body, FIELD, SCHEMA))
    deadline = time.monotonic() + 30
    while not all((i.get("spec") or {}).get(FIELD) == "on" for i in _items(custom, namespace)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the stored FineTuneJobs were not read with spec.{FIELD} within 30 s")
        time.sleep(0.3)
    patch = {"metadata": {"labels": {"crd-changed": "1"}}}

    def touch(name: str) -> Any:
        return custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    for name in names:
        _retried(lambda: touch(name))  # noqa: B023 - called at once, within the loop's turn


def restore_crd(api_client: Any, crd: Path | None = None) -> None:
    """The CRD as the repository (or `crd`) has it: FIELD pruned again."""
    install_crd(api_client, crd or CRDS / "finetunejob.yaml")


def wait_finished(custom: Any, namespace: str, count: int, timeout: float) -> dict[str, dict[str, Any]]:
    """Each FineTuneJob's status once `count` of them are Succeeded or Failed (failures are the fault's cost, so
    the wait ends on them too, never on a timeout for them)."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = {i["metadata"]["name"]: i.get("status") or {} for i in _items(custom, namespace)}
        done = [s for s in statuses.values() if s.get("phase") in ("Succeeded", "Failed")]
        if len(done) >= count:
            return statuses
        if time.monotonic() > deadline:
            phases = sorted({str(s.get("phase")) for s in statuses.values()})
            raise AssertionError(f"{len(done)} of {count} finished within {timeout:.0f} s; phases {phases}")
        time.sleep(0.5)


def config_invalid(statuses: dict[str, dict[str, Any]]) -> list[str]:
    """The jobs the fault failed: ConfigInvalid (before the fix, every stored one at its next event)."""
    return sorted(n for n, s in statuses.items() if (s.get("error") or {}).get("code") == "ConfigInvalid")
