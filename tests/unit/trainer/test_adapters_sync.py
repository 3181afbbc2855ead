"""The adapters sidecar's check of a desired entry (serving/adapters/sync.refusal, parse_desired): only the shape
the operator writes is fetched (the real S3 server's side: tests/serve/test_adapter_fetch.py)."""

from __future__ import annotations

import pytest
from finetune_trainer.serving.adapters.sync import Wanted, parse_desired, refusal


def _wanted(
    name: str = "bot", run: int = 2, uri: str = "s3://art/team-a/bot/run-2/model/", job: str = "team-a/bot"
) -> Wanted:
    return Wanted(name=name, run=run, uri=uri, job=job)


def test_the_sidecar_fetches_only_the_operator_shape_of_an_entry() -> None:
    assert refusal(_wanted(), "team-a") is None
    assert refusal(_wanted(name="team-b/bot", job="team-b/bot", uri="s3://art/b/bot/run-2/model/"), "team-a") is None
    refused = {
        "local path": (_wanted(uri="/adapters/team-b-bot-1234/run-1/"), "only s3://"),
        "file uri": (_wanted(uri="file:///adapters/x/run-2/model/"), "only s3://"),
        "other run": (_wanted(uri="s3://art/team-a/bot/run-3/model/"), "not the model folder of run 2"),
        "not the model": (_wanted(uri="s3://art/team-a/bot/run-2/"), "not the model folder of run 2"),
        "parent": (_wanted(uri="s3://art/team-b/../team-a/bot/run-2/model/"), "'..' segment"),
        "dot": (_wanted(uri="s3://art/./bot/run-2/model/"), "'.' or '..' segment"),
        "double slash": (_wanted(uri="s3://art//bot/run-2/model/"), "empty"),
        "no trailing slash": (_wanted(uri="s3://art/team-a/bot/run-2/model"), "trailing"),
        "backslash": (_wanted(uri="s3://art/a\\b/run-2/model/"), "backslash"),
        "no bucket": (_wanted(uri="s3:///run-2/model/"), "no bucket"),
        "name of another job": (_wanted(name="team-b/bot"), "not that of its FineTuneJob"),
        "job from another namespace without its prefix": (_wanted(job="team-b/bot"), "not that of its FineTuneJob"),
        "no job": (_wanted(job="bot"), "NAMESPACE/NAME"),
    }
    for wanted, message in refused.values():
        why = refusal(wanted, "team-a")
        assert why is not None and message in why, (wanted, why)


def test_the_desired_list_needs_the_job_of_each_entry() -> None:
    entry = {"name": "bot", "finetuneJob": "team-a/bot", "run": 1, "uri": "s3://a/bot/run-1/model/", "rank": 8}
    assert parse_desired({"adapters": [entry]}) == [_wanted(run=1, uri="s3://a/bot/run-1/model/")]
    with pytest.raises(ValueError, match=r"adapters\[0\] is malformed"):
        parse_desired({"adapters": [{k: v for k, v in entry.items() if k != "finetuneJob"}]})
