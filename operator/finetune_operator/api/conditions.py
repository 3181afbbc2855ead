"""metav1.Condition-shaped conditions: build them, and carry lastTransitionTime over when status is unchanged.

Why a module: lastTransitionTime must move only when `status` flips (tools and humans read "since when"),
and comparing statuses must ignore it, or every reconcile would look like a change and patch.
"""

from __future__ import annotations

from typing import Any

Condition = dict[str, Any]

TRAINED = "Trained"
GATE_PASSED = "GatePassed"
READY = "Ready"
ORDER = (TRAINED, GATE_PASSED, READY)


def condition(kind: str, status: bool | None, reason: str, message: str, generation: int) -> Condition:
    """One condition; status None means Unknown. lastTransitionTime is filled in by `merge`."""
    value = "Unknown" if status is None else ("True" if status else "False")
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message[:32768],
        "observedGeneration": generation,
        "lastTransitionTime": "",
    }


def merge(previous: list[Condition] | None, desired: list[Condition], now: str) -> list[Condition]:
    """The desired conditions, each keeping its old lastTransitionTime while its status stays the same."""
    old = {c.get("type"): c for c in previous or []}
    merged = []
    for cond in desired:
        before = old.get(cond["type"])
        same = before is not None and before.get("status") == cond["status"] and before.get("lastTransitionTime")
        merged.append({**cond, "lastTransitionTime": before["lastTransitionTime"] if same and before else now})
    return sorted(merged, key=lambda c: ORDER.index(c["type"]) if c["type"] in ORDER else len(ORDER))


def find(conditions: list[Condition] | None, kind: str) -> Condition | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)
