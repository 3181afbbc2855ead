"""Ownership (api.ownership, issue #24): what counts as a child, and memory bounded by the live owners.

The rule: a child counts only in its owner's namespace and when its controller ownerReference names the owner's
uid; a pod only through a Job that counts; labels never decide. The cluster-tier attacks that this rule stops
are in tests/integration/test_ownership_attacks.py; these pin the rule and the store's bound without a cluster.
"""

from __future__ import annotations

from typing import Any

from finetune_operator.api.ownership import controlled_by, controller_uid
from finetune_operator.core.observed import deployment_obs, job_obs, pod_obs
from finetune_operator.core.store import Store
from finetune_operator.finetunesweep.store import SweepStore
from finetune_operator.modelserver.admission import REFUSED_MAX, Refused, bounded_refusals
from finetune_operator.modelserver.plan import verdict_for

FTJ = "finetune.dev/v1alpha1"


def _ref(kind: str, uid: str, api_version: str = FTJ, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": "x", "uid": uid, "controller": controller}


def _body(name: str, namespace: str, uid: str = "", refs: list[dict[str, Any]] | None = None, **meta: Any) -> Any:
    labels = meta.pop("labels", {})
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{name}",
            "resourceVersion": "1",
            "labels": labels,
            "ownerReferences": refs or [],
            **meta,
        },
        "spec": {},
    }


def _owner(store: Store, namespace: str = "team-a", name: str = "a", uid: str = "A") -> tuple[str, str]:
    return store.put_body(_body(name, namespace, uid))


def test_rule_reads_the_controller_reference_and_namespace_never_labels() -> None:
    mine = _body("j", "team-a", refs=[_ref("FineTuneJob", "A")])
    assert controlled_by(mine, "team-a", "A") and controller_uid(mine, "FineTuneJob") == "A"
    assert not controlled_by(mine, "team-b", "A")  # another namespace: never a child, whatever it names
    labelled = _body("j", "team-a", labels={"finetune.dev/job-uid": "A"})
    assert not controlled_by(labelled, "team-a", "A") and controller_uid(labelled, "FineTuneJob") == ""
    not_controller = _body("j", "team-a", refs=[_ref("FineTuneJob", "A", controller=False)])
    assert not controlled_by(not_controller, "team-a", "A")
    # the right uid under another kind or group does not make a FineTuneJob's child
    assert controller_uid(_body("j", "team-a", refs=[_ref("FineTuneJob", "A", "evil.dev/v1")]), "FineTuneJob") == ""
    assert controller_uid(_body("p", "team-a", refs=[_ref("Job", "J", "batch/v1")]), "Job", "batch") == "J"
    assert not controlled_by(mine, "team-a", "")


def test_a_view_holds_only_children_in_the_owners_namespace_that_it_controls() -> None:
    store = Store()
    key = _owner(store)
    own = _body("a-r1", "team-a", "J1", [_ref("FineTuneJob", "A")], labels={"finetune.dev/run": "1"})
    # the attacks of issue #24: A's uid as a label in team-b and in team-a, and as the controller in team-b
    forged = [
        _body("evil-r1", "team-b", "J2", labels={"finetune.dev/job-uid": "A", "finetune.dev/run": "1"}),
        _body("stray-r1", "team-a", "J3", labels={"finetune.dev/job-uid": "A", "finetune.dev/run": "1"}),
        _body("evil-r2", "team-b", "J4", [_ref("FineTuneJob", "A")], labels={"finetune.dev/run": "2"}),
    ]
    for body in (own, *forged):
        store.put_job(job_obs(body))
    pods = [
        _body("a-r1-x", "team-a", refs=[_ref("Job", "J1", "batch/v1")]),
        _body("evil-x", "team-b", refs=[_ref("Job", "J1", "batch/v1")]),  # names A's Job, from team-b
        _body("evil-y", "team-b", refs=[_ref("Job", "J4", "batch/v1")]),  # of the forged Job
        _body("stray-x", "team-a", labels={"finetune.dev/job-uid": "A"}),  # no controller at all
        _body("stray-y", "team-a", refs=[_ref("Job", "J3", "batch/v1")]),  # of the stray (unowned) Job
    ]
    for body in pods:
        store.put_pod(pod_obs(body))
    store.put_deployment(deployment_obs(_body("evil-serving", "team-b", refs=[_ref("FineTuneJob", "A")])))
    view = store.view(key)
    assert view is not None
    assert [j.name for j in view.jobs] == ["a-r1"] and [p.name for p in view.pods] == ["a-r1-x"]
    assert view.deployment is None
    assert store.owner_key("team-b", "A") is None and store.owner_key("team-a", "A") == key
    assert store.owner_of_pod(pod_obs(pods[1])) is None and store.owner_of_pod(pod_obs(pods[0])) == key


def test_store_entries_go_with_their_owner_and_forged_uids_are_pruned() -> None:
    store = Store()
    key = _owner(store)
    job = _body("a-r1", "team-a", "J1", [_ref("FineTuneJob", "A")])
    store.put_job(job_obs(job))
    store.put_pod(pod_obs(_body("a-r1-x", "team-a", refs=[_ref("Job", "J1", "batch/v1")])))
    store.put_deployment(deployment_obs(_body("a-serving", "team-a", refs=[_ref("FineTuneJob", "A")])))
    # a tenant floods the watch with children naming uids that no FineTuneJob has
    for i in range(100):
        store.put_job(job_obs(_body(f"f{i}", "team-b", f"F{i}", [_ref("FineTuneJob", f"forged-{i}")])))
        store.put_pod(pod_obs(_body(f"fp{i}", "team-b", refs=[_ref("Job", f"F{i}", "batch/v1")])))
    assert store.sizes() == (101, 101)
    assert store.prune() == 0  # a child's event may come before its owner's: one resync period of grace
    assert store.prune() == 200 and store.sizes() == (1, 1) and store.job_owner_entries() == 1
    assert store.owner_of_pod(pod_obs(_body("a-r1-x", "team-a", refs=[_ref("Job", "J1", "batch/v1")]))) == key
    view = store.view(key)
    assert view is not None and len(view.jobs) == 1 and len(view.pods) == 1 and view.deployment is not None
    # the owner goes: so do its children and their pods, and the events that follow its deletion add nothing
    store.forget_body("team-a", "a", "A")
    assert store.sizes() == (0, 0) and store.job_owner_entries() == 0
    store.forget_job("team-a", "A", "a-r1")
    store.forget_pod(pod_obs(_body("a-r1-x", "team-a", refs=[_ref("Job", "J1", "batch/v1")])))
    store.forget_deployment("team-a", "A")
    assert store.sizes() == (0, 0) and store.key_of("A") is None
    # a late update event of a child of the deleted owner is filed, then pruned like any orphan
    store.put_job(job_obs(job))
    store.prune()
    assert store.prune() == 1 and store.sizes() == (0, 0)


def test_a_child_that_became_owned_in_the_grace_period_is_kept() -> None:
    store = Store()
    store.put_job(job_obs(_body("a-r1", "team-a", "J1", [_ref("FineTuneJob", "A")])))
    store.prune()  # its owner is not known yet
    key = _owner(store)  # ... and now it is
    assert store.prune() == 0
    view = store.view(key)
    assert view is not None and [j.name for j in view.jobs] == ["a-r1"]


def _sweep(namespace: str = "team-a", uid: str = "S", winner_uid: str = "") -> dict[str, Any]:
    body = _body("lr", namespace, uid)
    body["status"] = {"winner": {"name": "lr-t0", "uid": winner_uid}} if winner_uid else {}
    return body


def _trial(name: str, namespace: str, uid: str, controller: str = "") -> dict[str, Any]:
    refs = [_ref("FineTuneSweep", controller)] if controller else []
    labels = {"finetune.dev/sweep-uid": "S", "finetune.dev/trial": name[-1]}
    return _body(name, namespace, uid, refs, labels=labels)


def test_sweep_trials_are_the_ones_it_controls_in_its_namespace_or_its_recorded_winner() -> None:
    from finetune_operator.api.finetunesweep import ANNOTATION_PUBLISHED

    sweeps = SweepStore()
    key = sweeps.put_sweep(_sweep())
    candidates = [
        _trial("lr-t0", "team-a", "T0", controller="S"),
        _trial("lr-t1", "team-b", "T1", controller="S"),  # another namespace
        _trial("lr-t2", "team-a", "T2"),  # the label only
        _trial("lr-t3", "team-a", "T3", controller="other-sweep"),
    ]
    for body in candidates:
        sweeps.put_trial("S", body)
    view = sweeps.view(key)
    assert view is not None and [t.name for t in view[1]] == ["lr-t0"]
    assert sweeps.put_trial("S", candidates[1]) is None  # a candidate in team-b never queues the sweep
    # published: the owner reference is gone; the sweep follows the uid its status recorded, only that one
    published = _trial("lr-t0", "team-a", "T0")
    published["metadata"]["annotations"] = {ANNOTATION_PUBLISHED: "lr"}
    sweeps.put_trial("S", published)
    view = sweeps.view(key)
    assert view is not None and view[1] == ()
    key = sweeps.put_sweep({**_sweep(winner_uid="T0"), "metadata": {**_sweep()["metadata"], "resourceVersion": "2"}})
    view = sweeps.view(key)
    assert view is not None and [t.name for t in view[1]] == ["lr-t0"]


def test_sweep_candidates_under_uids_no_sweep_has_are_pruned() -> None:
    sweeps = SweepStore()
    sweeps.put_sweep(_sweep())
    for i in range(50):
        sweeps.put_trial(f"forged-{i}", _trial(f"x-t{i % 10}", "team-b", f"X{i}"))
    sweeps.put_trial("S", _trial("lr-t0", "team-a", "T0", controller="S"))
    assert sweeps.sizes() == 51
    assert sweeps.prune() == 0 and sweeps.prune() == 50 and sweeps.sizes() == 1
    sweeps.forget_sweep("team-a", "lr", "S")
    assert sweeps.sizes() == 0


def test_refusals_in_a_servers_status_are_bounded_its_own_tenants_first() -> None:
    strangers = [Refused(f"team-{i:03}/j", "NamespaceNotAllowed", "m" * 200) for i in range(500)]
    own = Refused("team-a/big", "RankTooHigh", "rank 64")
    listed = bounded_refusals([*strangers, own])
    assert len(listed["refused"]) == REFUSED_MAX and listed["refusedOmitted"] == 501 - REFUSED_MAX
    assert listed["refused"][0]["finetuneJob"] == "team-a/big"
    assert bounded_refusals([own]) == {"refused": [own.to_wire()], "refusedOmitted": 0}
    status = {"status": listed}
    assert verdict_for("team-a", "big", 1, ("team-a", "shared"), status).reason == "RankTooHigh"
    beyond = verdict_for("team-499", "j", 1, ("team-a", "shared"), status)
    assert beyond.reason == "Waiting" and f"{501 - REFUSED_MAX} more" in beyond.message
