"""The operator's own metrics: FineTuneJobs by phase is derived from the last phase each job reached."""

from __future__ import annotations

from finetune_operator.metrics import KNOWN_PHASES, PhaseTracker
from finetune_operator.settings import parse_args
from prometheus_client import CollectorRegistry, generate_latest


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
