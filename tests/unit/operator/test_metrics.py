"""The operator's own metrics: FineTuneJobs by phase is derived from the last phase each job reached."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_operator.core.metrics import JOBS_BY_PHASE, KNOWN_PHASES, PhaseTracker
from finetune_operator.core.settings import parse_args
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest


def _scrape(tracker: PhaseTracker) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(tracker)
    values: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("finetune_operator_finetunejobs{"):
            labels, value = line.rsplit(" ", 1)
            values[labels.split('"')[1]] = float(value)
    return values


def test_phase_counts_follow_moves_and_deletes() -> None:
    tracker = PhaseTracker()
    tracker.set("a", "one", "Training")
    tracker.set("a", "two", "Training")
    tracker.set("b", "one", "Queued")
    tracker.set("a", "one", "Succeeded")  # moved: counted once, in its new phase
    tracker.forget("b", "one")
    tracker.forget("b", "never-seen")
    scraped = _scrape(tracker)
    assert scraped["Training"] == 1 and scraped["Succeeded"] == 1 and scraped["Queued"] == 0
    assert set(KNOWN_PHASES) <= set(scraped)  # zeros are exported too
    assert sum(scraped.values()) == 2


def test_an_unknown_phase_is_still_counted() -> None:
    tracker = PhaseTracker()
    tracker.set("a", "x", "SomethingNew")
    assert _scrape(tracker)["SomethingNew"] == 1


def test_log_format_flag_and_env() -> None:
    assert parse_args([], env={}).log_format == "text"
    assert parse_args([], env={"FTO_LOG_FORMAT": "json"}).log_format == "json"
    assert parse_args(["--log-format", "text"], env={"FTO_LOG_FORMAT": "json"}).log_format == "text"


class _FakeKube:
    """Only what one reconcile pass calls; `fail_create` / `fail_status` inject the API's two error families."""

    def __init__(self, fail_create: Exception | None = None, fail_status: Exception | None = None) -> None:
        self.fail_create, self.fail_status = fail_create, fail_status

    def exists_metadata(self, *_: Any) -> bool:
        return True

    def get(self, *_: Any) -> None:  # no trainer Role made by an older operator
        return None

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if self.fail_create and manifest["kind"] in ("Job", "Pod"):  # a stage's workload: the check pod, a Job
            raise self.fail_create
        return {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "1", "uid": "child"}}

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any], version: str) -> dict[str, Any]:
        if self.fail_status:
            raise self.fail_status
        meta = {"namespace": namespace, "name": name, "uid": "u1", "resourceVersion": str(int(version) + 1)}
        return {"metadata": meta, "spec": {}, "status": patch.get("status", {})}

    def post_event(self, *_: Any) -> None:
        return None


def _reconcile(kube: _FakeKube, name: str) -> Any:
    from finetune_operator.core.settings import Settings
    from finetune_operator.core.store import Store
    from finetune_operator.finetunejob.controller import Reconciler

    store = Store()
    body = {
        "metadata": {"namespace": "team-a", "name": name, "uid": "u1", "resourceVersion": "5", "generation": 1},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny/"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "schema": "chat"},
            "output": {"uri": "s3://artifacts/x/"},
        },
    }
    return Reconciler(kube, store, Settings()).reconcile(store.put_body(body))  # type: ignore[arg-type, unused-ignore]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_reconcile_records_phase_and_counts_each_error_family() -> None:
    from finetune_operator.core.errors import PermanentError, TemporaryError
    from finetune_operator.core.workqueue import RequeueError

    _reconcile(_FakeKube(), "fine")
    assert JOBS_BY_PHASE.counts()["Queued"] >= 1  # a Job created in this pass reports Queued

    before = _sample("finetune_operator_reconcile_errors_total", kind="permanent")
    _reconcile(_FakeKube(fail_create=PermanentError("Job is invalid")), "refused")
    assert _sample("finetune_operator_reconcile_errors_total", kind="permanent") == before + 1
    assert JOBS_BY_PHASE.counts()["Failed"] >= 1

    before = _sample("finetune_operator_reconcile_errors_total", kind="temporary")
    with pytest.raises(RequeueError):
        _reconcile(_FakeKube(fail_status=TemporaryError("conflict")), "busy")
    assert _sample("finetune_operator_reconcile_errors_total", kind="temporary") == before + 1

    before = _sample("finetune_operator_reconcile_errors_total", kind="unexpected")
    with pytest.raises(KeyError):
        _reconcile(_FakeKube(fail_status=KeyError("bug")), "buggy")
    assert _sample("finetune_operator_reconcile_errors_total", kind="unexpected") == before + 1
