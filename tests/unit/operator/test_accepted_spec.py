"""core.accepted_spec: a generation this operator accepted reads on across a CRD upgrade that adds a defaulted
field (for the three kinds), the fields read away are named in one warning, a new generation is refused by name,
and the warnings' memory is bounded by the live objects."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from finetune_operator.api.finetunejob import FineTuneJobSpec, parse_spec, training_spec_hash
from finetune_operator.api.finetunesweep import SweepSpec, parse_sweep_spec, sweep_without_unknown_fields
from finetune_operator.api.modelserver import parse_server_spec
from finetune_operator.core.accepted_spec import AcceptedSpecs
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Store
from finetune_operator.finetunejob.controller import Reconciler
from finetune_operator.modelserver.controller import ServerReconciler
from pydantic import ValidationError

from .support import minimal

NEW = "testDefaultedField"


def _body(spec: dict[str, Any], generation: int = 3, observed: int | None = 3, uid: str = "u1") -> dict[str, Any]:
    status = {"observedGeneration": observed} if observed is not None else {}
    meta = {"namespace": "team-a", "name": "bot", "uid": uid, "generation": generation, "resourceVersion": "7"}
    return {"metadata": meta, "spec": spec, "status": status}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_accepted_generation_reads_on_without_the_new_default_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    specs: AcceptedSpecs[FineTuneJobSpec] = AcceptedSpecs("FineTuneJob", parse_spec)
    body = _body({**minimal(), NEW: "on"})
    with caplog.at_level(logging.WARNING):
        spec, raw = specs.read(body, refused_before=False)
        specs.read(body, refused_before=False)
    assert raw == minimal() and body["spec"][NEW] == "on"  # the caller's body is unchanged
    assert training_spec_hash(spec) == training_spec_hash(parse_spec(minimal()))  # no new run
    (warning,) = _warnings(caplog)
    assert f"FineTuneJob team-a/bot: spec.{NEW} not known to this operator" in warning and "generation 3" in warning


def test_a_valid_spec_is_read_as_it_is_with_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    specs: AcceptedSpecs[FineTuneJobSpec] = AcceptedSpecs("FineTuneJob", parse_spec)
    body = _body(minimal(), observed=None)
    with caplog.at_level(logging.WARNING):
        _spec, raw = specs.read(body, refused_before=False)
    assert raw is body["spec"] and not _warnings(caplog) and specs.size() == 0


@pytest.mark.parametrize(
    ("body", "refused_before"),
    [
        (_body({**minimal(), NEW: "on"}, generation=4, observed=3), False),  # a new generation: the user's
        (_body({**minimal(), NEW: "on"}, generation=1, observed=None), False),  # never accepted at all
        (_body({**minimal(), NEW: "on"}), True),  # this generation was refused before
        (_body({**minimal(hyperparameters={"learningRate": "fast"}), NEW: "on"}), False),  # a wrong value too
    ],
)
def test_anything_but_an_accepted_generations_unknown_fields_is_still_refused_by_name(
    body: dict[str, Any], refused_before: bool
) -> None:
    specs: AcceptedSpecs[FineTuneJobSpec] = AcceptedSpecs("FineTuneJob", parse_spec)
    with pytest.raises(ValidationError) as refused:
        specs.read(body, refused_before=refused_before)
    assert any(e["loc"] == (NEW,) for e in refused.value.errors())


def _sweep_raw(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "template": minimal(),
        "parameters": [{"path": "hyperparameters.learningRate", "values": [1e-4, 3e-4]}],
    }
    raw.update(overrides)
    return raw


def test_a_sweeps_template_and_own_fields_are_both_read_away(caplog: pytest.LogCaptureFixture) -> None:
    """The template's unknown field (a newer FineTuneJob CRD's default copied into the sweep CRD) hides inside one
    value error of the sweep; it is found by path, and the trials' template is read without it."""
    specs: AcceptedSpecs[SweepSpec] = AcceptedSpecs("FineTuneSweep", parse_sweep_spec, sweep_without_unknown_fields)
    raw = _sweep_raw(template={**minimal(), NEW: "on"}, **{NEW: "on"})
    with caplog.at_level(logging.WARNING):
        spec, read = specs.read(_body(raw), refused_before=False)
    assert spec.template == minimal() and NEW not in read
    (warning,) = _warnings(caplog)
    assert f"FineTuneSweep team-a/bot: spec.template.{NEW}, spec.{NEW} not known" in warning
    only_template = _sweep_raw(template={**minimal(), NEW: "on"})
    assert specs.read(_body(only_template), refused_before=False)[0].template == minimal()


def test_a_sweep_whose_template_is_wrong_beside_the_unknown_field_is_refused() -> None:
    raw = _sweep_raw(template={**minimal(hyperparameters={"learningRate": "fast"}), NEW: "on"})
    assert sweep_without_unknown_fields(raw, None) is None
    assert sweep_without_unknown_fields(_sweep_raw(), None) is None  # nothing unknown: nothing to read away


def test_a_model_server_reads_on_unless_its_ready_condition_refused_the_generation() -> None:
    reconciler = ServerReconciler(kube=None, store=Store(), settings=Settings(trainer_image="t"))  # type: ignore[arg-type]
    spec = {"baseModelUri": "s3://models/tiny/", NEW: "on"}
    body = _body(spec)
    read = reconciler._as_accepted(body)
    assert read["spec"] == {"baseModelUri": "s3://models/tiny/"} and read["metadata"] == body["metadata"]
    parse_server_spec(read["spec"])
    refused = {
        "type": "Ready",
        "status": "False",
        "reason": "ConfigInvalid",
        "message": "spec.x",
        "observedGeneration": 3,
    }
    body["status"]["conditions"] = [refused]
    assert reconciler._as_accepted(body) is body  # left for the plan to refuse by name


def test_the_warnings_memory_is_one_entry_per_live_object() -> None:
    """A FineTuneJob's memories (warnings, Role checks) go with its deletion and at the resync's prune."""
    store = Store()
    reconciler = Reconciler(kube=None, store=store, settings=Settings(trainer_image="t"))  # type: ignore[arg-type]
    for uid in ("a", "b", "c"):
        held = _body(minimal(), uid=uid)
        store.put_body({**held, "metadata": {**held["metadata"], "name": uid}})
        for generation in (3, 4):  # two accepted generations read with the field, one after the other
            body = _body({**minimal(), NEW: "on"}, generation, generation, uid)
            reconciler.accepted.read(body, refused_before=False)
        reconciler._rules_checked.add(uid)
    assert reconciler.accepted.size() == 3  # one per object, not one per (object, generation)
    reconciler.forget("a")
    store.forget_body("team-a", "b", "b")  # a deletion whose event was missed: the resync's prune finds it
    reconciler.prune()
    assert reconciler.accepted.size() == 1 and reconciler._rules_checked == {"c"}
