"""The admin's policy (builders.policy): node identity, priority classes and tolerations a tenant may ask for;
read from the chart's variables (settings), refused by name at plan time, and lifted when the spec or policy changes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from finetune_operator.api.modelserver import parse_server_spec
from finetune_operator.builders.policy import REFUSED, job_refusal, server_refusal
from finetune_operator.core.settings import AllowedToleration, Settings, parse_args
from finetune_operator.finetunejob.plan import Snapshot, plan
from finetune_operator.finetunesweep.plan import USER_ERRORS

from .support import OWNER, spec

GPU = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# what the chart renders by default (values.yaml `policy`): nothing beyond a credentials Secret
CHART_DEFAULT = parse_args(
    [],
    env={"FTO_ALLOW_NODE_IDENTITY": "false", "FTO_ALLOWED_PRIORITY_CLASSES": "", "FTO_ALLOWED_TOLERATIONS": "[]"},
)
STRICT = replace(CHART_DEFAULT, trainer_image="trainer:test", validation=False)


def _snap(s: Any, status: dict[str, Any] | None = None) -> Snapshot:
    return Snapshot(
        owner=OWNER, generation=1, spec=s, status=status or {}, now="2026-11-28T15:00:00Z", secret_present=True
    )


def test_chart_variables_reach_the_settings_and_bad_ones_stop_the_operator() -> None:
    assert CHART_DEFAULT.allow_node_identity is False
    assert CHART_DEFAULT.allowed_priority_classes == () and CHART_DEFAULT.allowed_tolerations == ()
    unset = parse_args([], env={})  # a bare `python -m finetune_operator`: today's behaviour, nothing checked
    assert unset.allow_node_identity and unset.allowed_priority_classes is None and unset.allowed_tolerations is None
    assert unset.secret_check and not parse_args([], env={"FTO_SECRET_CHECK": "false"}).secret_check
    given = parse_args(
        ["--allowed-priority-classes", "batch-low,batch-high"],
        env={"FTO_ALLOWED_TOLERATIONS": json.dumps([GPU, {"key": "pool"}])},
    )
    assert given.allowed_priority_classes == ("batch-low", "batch-high")
    assert given.allowed_tolerations == (AllowedToleration(**GPU), AllowedToleration(key="pool"))
    for bad in ("{not json", '{"key": "a"}', '[{"key": "a", "tolerationSeconds": 5}]', '[{"key": 1}]'):
        with pytest.raises(SystemExit, match="FTO_ALLOWED_TOLERATIONS"):
            parse_args([], env={"FTO_ALLOWED_TOLERATIONS": bad})


def test_empty_credentials_secret_is_refused_unless_the_admin_allows_node_identity() -> None:
    nodes = spec(storage={"endpoint": "http://s3:9000"})
    message = job_refusal(nodes, STRICT)
    assert message is not None and "spec.storage.credentialsSecret is empty" in message
    assert "policy.allowNodeIdentity" in message
    assert job_refusal(nodes, replace(STRICT, allow_node_identity=True)) is None
    assert job_refusal(spec(), STRICT) is None  # a Secret named: fine


def test_priority_classes_and_tolerations_outside_the_allow_lists_are_refused_by_field() -> None:
    asks = spec(
        resources={
            "priorityClassName": "system-cluster-critical",
            "tolerations": [GPU, {"operator": "Exists"}, {"key": "pool", "operator": "Equal", "value": "a"}],
        }
    )
    message = job_refusal(asks, STRICT) or ""
    assert "spec.resources.priorityClassName 'system-cluster-critical' is not allowed here (allowed: none)" in message
    assert "spec.resources.tolerations[0]" in message and "spec.resources.tolerations[2]" in message
    assert "spec.resources.tolerations[1] {operator: Exists}" in message  # the one that tolerates every taint
    admin = replace(
        STRICT,
        allowed_priority_classes=("system-cluster-critical",),
        allowed_tolerations=(AllowedToleration(**GPU), AllowedToleration(key="pool")),
    )
    assert "tolerations[1]" in (job_refusal(asks, admin) or "")  # a key-less Exists needs an entry that allows it
    remaining = job_refusal(asks, admin) or ""
    assert "priorityClassName" not in remaining and "tolerations[2]" not in remaining
    anything = replace(admin, allowed_priority_classes=("*",), allowed_tolerations=(AllowedToleration(),))
    assert job_refusal(asks, anything) is None
    with_seconds = spec(resources={"tolerations": [{**GPU, "tolerationSeconds": 30}]})
    assert job_refusal(with_seconds, admin) is None  # tolerationSeconds is the tenant's own business
    assert job_refusal(asks, Settings()) is None  # unset lists: not checked


def test_a_refused_job_makes_nothing_fails_by_name_and_starts_once_the_spec_is_fixed() -> None:
    asks = spec(resources={"priorityClassName": "high"})
    p = plan(_snap(asks), STRICT)
    assert p.create == [] and p.status["phase"] == "Failed"
    error = p.status["error"]
    assert error["code"] == REFUSED and "spec.resources.priorityClassName 'high'" in error["message"]
    assert [e.type for e in p.events] == ["Warning"]
    again = plan(_snap(asks, p.status), STRICT)  # the same pass again: still refused, nothing to write
    assert again.create == [] and again.status == p.status
    fixed = plan(_snap(spec(), p.status), STRICT)  # placement is not part of the run: the same run now starts
    assert fixed.status["run"] == 1 and [m["kind"] for m in fixed.create][-1] == "Job"
    assert fixed.status["error"] is None


def test_sweeps_stop_on_a_refused_trial_like_any_template_error() -> None:
    assert REFUSED in USER_ERRORS


def test_model_servers_are_held_to_the_same_policy() -> None:
    server = parse_server_spec({"baseModelUri": "s3://models/tiny/", "tolerations": [GPU]})
    message = server_refusal(server, STRICT) or ""
    assert "spec.storage.credentialsSecret is empty" in message and "spec.tolerations[0]" in message
    allowed = replace(STRICT, allow_node_identity=True, allowed_tolerations=(AllowedToleration(**GPU),))
    assert server_refusal(server, allowed) is None
