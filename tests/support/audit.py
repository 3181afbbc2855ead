"""The local cluster's API server audit log (hack/audit-policy.yaml: every write at Metadata level): which client
wrote what, and when, as the API server saw it. Tests use it to prove that a client made no write, which its own
log cannot prove (a client that misbehaves may not say so).

Each operator process names itself in its User-Agent (`finetune-operator/<leader election identity>`), so the
writes of two replicas sharing one kubeconfig are told apart.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.cluster import state_dir

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Write:
    """One write request the API server answered."""

    at: datetime  # when the API server received it
    verb: str
    resource: str  # "jobs", "finetunejobs/status", "leases", ...
    namespace: str
    name: str
    code: int

    def __str__(self) -> str:
        return f"{self.at.isoformat()} {self.verb} {self.resource} {self.namespace}/{self.name} -> {self.code}"


def log_path() -> Path:
    """The audit log of the cluster under test; a clear failure when that cluster keeps none."""
    path = state_dir() / "logs" / "audit.log"
    if not path.exists():
        raise AssertionError(
            f"{path} is missing: the kube-apiserver was started before hack/cluster.sh enabled its audit log "
            "(or the tests run against another cluster); restart it with hack/cluster.sh down && up"
        )
    return path


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _lines(path: Path | None) -> Iterator[str]:
    """Every line of the audit log, the rotated backup (audit-<time>.log, hack/cluster.sh keeps one) first: a
    write must not hide in it."""
    current = path or log_path()
    files = [*sorted(current.parent.glob(f"{current.stem}-*{current.suffix}")), current]
    for file in files:
        yield from file.read_text(errors="replace").splitlines()


def _write_events(path: Path | None, needle: str) -> Iterator[dict[str, Any]]:
    """The write events of the log whose line contains `needle` (a substring test before any JSON is parsed)."""
    for line in _lines(path):
        if needle not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line being written as we read
        if event.get("verb") in WRITE_VERBS:
            yield event


def writes_by_client(namespace: str, since: datetime, until: datetime, path: Path | None = None) -> Counter[str]:
    """How many writes each client sent into `namespace` between `since` and `until` (UTC), by the product
    of its User-Agent (`finetune-operator`, `kube-controller-manager`, `jobset`, ...): the API server's own
    count of who did the work for the objects there, whatever each client says of itself."""
    counts: Counter[str] = Counter()
    for event in _write_events(path, f'"namespace":"{namespace}"'):  # cheap: most lines are other namespaces'
        if (event.get("objectRef") or {}).get("namespace") != namespace:
            continue
        if not since <= _time(str(event.get("requestReceivedTimestamp"))) <= until:
            continue
        counts[str(event.get("userAgent") or "?").split("/", 1)[0]] += 1
    return counts


def writes(
    user_agent: str, namespace: str = "", since: datetime | None = None, path: Path | None = None
) -> list[Write]:
    """The writes whose User-Agent is exactly `user_agent` (in `namespace` when given), received at or after
    `since` (a UTC datetime)."""
    found: list[Write] = []
    for event in _write_events(path, user_agent):  # cheap: most lines are other clients'
        if event.get("userAgent") != user_agent:
            continue
        ref = event.get("objectRef") or {}
        if namespace and ref.get("namespace") != namespace:
            continue
        at = _time(str(event.get("requestReceivedTimestamp")))
        if since is not None and at < since:
            continue
        resource = str(ref.get("resource") or "")
        if ref.get("subresource"):
            resource += "/" + str(ref["subresource"])
        code = int((event.get("responseStatus") or {}).get("code") or 0)
        found.append(
            Write(at, str(event["verb"]), resource, str(ref.get("namespace") or ""), str(ref.get("name") or ""), code)
        )
    return found


def now() -> datetime:
    return datetime.now(UTC)
