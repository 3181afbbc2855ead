"""A ModelServer's pass without a cluster: snapshot (its body, the FineTuneJobs naming it, its objects as the
watches reported them) -> plan (what to create, apply, delete, which reports to drop, its status), its memory,
and the registry that routes watch events to it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH
from finetune_operator.builders.modelserver import ServerNames, ServerOwner, server_bundle
from finetune_operator.core.registry import CONFIG_MAPS, DEPLOYMENTS, PODS, selectors
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Store
from finetune_operator.finetunejob.registration import CONTROLLER as FINETUNEJOB
from finetune_operator.finetunesweep.registration import CONTROLLER as FINETUNESWEEP
from finetune_operator.modelserver.controller import ServerReconciler
from finetune_operator.modelserver.observed import ServerChildren, ServerPodObs, server_pod_obs
from finetune_operator.modelserver.plan import ServerSnapshot, plan
from finetune_operator.modelserver.registration import CONTROLLER as MODELSERVER
from finetune_operator.modelserver.store import ServerStore

SETTINGS = Settings(trainer_image="registry.local/finetune-trainer:test")
OWNER = ServerOwner("team-a", "shared", "5e5e5e5e-1111-4222-8333-444455556666")
NAMES = ServerNames.of("shared")
BASE = "s3://models/smollm2/"


def _body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": "shared", "uid": OWNER.uid, "generation": 2},
        "spec": {"baseModelUri": BASE, "replicas": 2, **spec},
        "status": status or {},
    }


def _job(name: str, run: int = 1) -> dict[str, Any]:
    published = {"run": run, "modelUri": f"s3://a/{name}/run-{run}/model/", "baseModelUri": BASE, "adapter": True}
    return {
        "metadata": {"namespace": "team-a", "name": name, "creationTimestamp": f"2026-01-01T00:00:0{run}Z"},
        "spec": {"serving": {"enabled": True, "server": "shared"}, "output": {"uri": f"s3://a/{name}/"}},
        "status": {"published": published},
    }


def _bundle_hash(**spec: Any) -> str:
    from finetune_operator.api.modelserver import parse_server_spec

    bundle = server_bundle(parse_server_spec({"baseModelUri": BASE, "replicas": 2, **spec}), OWNER, SETTINGS)
    return str(bundle[-1]["metadata"]["annotations"][ANNOTATION_SPEC_HASH])


def _report(*adapters: tuple[str, int]) -> str:
    return json.dumps({"adapters": [{"name": n, "run": r, "uri": "s3://x/"} for n, r in adapters]})


def _snapshot(children: ServerChildren, *jobs: dict[str, Any], **body: Any) -> ServerSnapshot:
    return ServerSnapshot(body=_body(**body), jobs=jobs, children=children, now="2026-01-01T00:00:00Z")


def test_a_new_server_gets_its_bundle_an_empty_report_and_its_desired_list() -> None:
    decided = plan(_snapshot(ServerChildren(), _job("a")), SETTINGS)
    assert [m["kind"] for m in decided.create] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap"]
    assert decided.create[-1]["metadata"]["name"] == NAMES.loaded
    assert [m["kind"] for m in decided.apply] == [
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
        "ConfigMap",
    ]
    desired = json.loads(decided.apply[-1]["data"]["adapters.json"])
    assert [a["name"] for a in desired["adapters"]] == ["a"] and decided.desired_changed
    assert decided.delete == () and decided.drop_reports == ()
    assert decided.status["readyReplicas"] == 0 and decided.status["adapters"][0]["finetuneJob"] == "team-a/a"
    assert decided.requeue_after is None  # every input is a watch event


def test_a_converged_server_writes_nothing_but_its_status() -> None:
    adapters_doc = plan(_snapshot(ServerChildren(), _job("a")), SETTINGS).apply[-1]["data"]
    children = ServerChildren(
        pods=(ServerPodObs("p1", ready=True), ServerPodObs("p2", ready=True)),
        config_maps={
            NAMES.adapters: dict(adapters_doc),
            NAMES.loaded: {"p1": _report(("a", 1)), "p2": _report(("a", 1))},
        },
        deployment_hash=_bundle_hash(),
    )
    decided = plan(_snapshot(children, _job("a")), SETTINGS)
    assert decided.create == () and decided.apply == () and not decided.desired_changed
    conditions = {c["type"]: c["status"] for c in decided.status["conditions"]}
    assert conditions == {"Ready": "True", "Converged": "True"}
    assert [r["adapters"] for r in decided.status["loaded"]] == [["a@1"], ["a@1"]]


def test_reports_of_gone_or_going_pods_are_dropped_and_not_counted() -> None:
    children = ServerChildren(
        pods=(ServerPodObs("p1", ready=True), ServerPodObs("p2", ready=True, deleting=True)),
        config_maps={NAMES.loaded: {"p1": _report(), "p2": _report(), "old": _report()}},
        deployment_hash=_bundle_hash(),
    )
    decided = plan(_snapshot(children), SETTINGS)
    assert decided.drop_reports == ("p2", "old")
    assert [r["pod"] for r in decided.status["loaded"]] == ["p1"] and decided.status["readyReplicas"] == 1
    assert all(m["metadata"]["name"] != NAMES.loaded for m in decided.create)


def test_scaling_to_one_replica_reapplies_the_bundle_and_removes_the_pdb() -> None:
    children = ServerChildren(deployment_hash=_bundle_hash())
    decided = plan(_snapshot(children, replicas=1), SETTINGS)
    assert "PodDisruptionBudget" not in [m["kind"] for m in decided.apply]
    assert decided.delete == (("policy/v1", "PodDisruptionBudget", NAMES.deployment),)


def test_an_invalid_spec_is_reported_and_nothing_is_written() -> None:
    decided = plan(_snapshot(ServerChildren(), replicas="many"), SETTINGS)
    assert decided.create == () and decided.apply == ()
    (ready,) = decided.status["conditions"]
    assert ready["reason"] == "ConfigInvalid" and "replicas" in ready["message"]


def test_adapters_already_held_keep_their_place_when_the_server_is_full() -> None:
    held = {"adapters": [{"name": "late"}]}
    newer, older = _job("late", run=2), _job("early", run=1)
    decided = plan(_snapshot(ServerChildren(), older, newer, status=held, maxAdapters=1), SETTINGS)
    assert [a.name for a in decided.desired] == ["late"]
    assert [r["reason"] for r in decided.status["refused"]] == ["ServerFull"]


def test_server_pod_observation_reads_readiness_and_deletion() -> None:
    body = {
        "metadata": {"name": "p", "deletionTimestamp": "t"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert server_pod_obs(body) == ServerPodObs("p", ready=True, deleting=True)
    assert server_pod_obs({"metadata": {"name": "q"}}) == ServerPodObs("q")


def test_the_server_store_keeps_the_newest_version_of_what_a_pass_wrote() -> None:
    servers = ServerStore()
    servers.put_config_map("u", "cm", "12", {"k": "new"})
    servers.put_config_map("u", "cm", "11", {"k": "old"})  # the watch reporting an older version late
    servers.put_deployment("u", "12", "h2")
    servers.put_deployment("u", "11", "h1")
    children = servers.children("u")
    assert children.config_map("cm") == {"k": "new"} and children.deployment_hash == "h2"
    servers.forget_config_map("u", "cm")
    servers.forget_deployment("u")
    assert servers.children("u").config_map("cm") is None and servers.children("u").deployment_hash is None


def _event(controller: Any, loop: Any, resource: Any, event: str, body: dict[str, Any]) -> list[Any]:
    """What handlers.py does with one event for one registered kind: the keys its watches queue."""
    keys = []
    for watch in controller.watches:
        if watch.resource == resource and watch.takes(body):
            keys += watch.observe(loop, event, body)
    return keys


def test_watch_events_fill_the_servers_memory_and_queue_it() -> None:
    store = Store()
    loop = ServerReconciler(kube=None, store=store, settings=SETTINGS)  # type: ignore[arg-type]
    server = {**_body(), "metadata": {**_body()["metadata"], "resourceVersion": "5"}}
    assert _event(MODELSERVER, loop, MODELSERVER.resource, "ADDED", server) == [("team-a", "shared")]
    labels = {"finetune.dev/server-uid": OWNER.uid, "finetune.dev/component": "model-server"}
    pod = {
        "metadata": {"name": "p1", "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    report = {"metadata": {"name": NAMES.loaded, "labels": labels, "resourceVersion": "7"}, "data": {"p1": _report()}}
    assert _event(MODELSERVER, loop, PODS, "ADDED", pod) == [("team-a", "shared")]
    assert _event(MODELSERVER, loop, CONFIG_MAPS, "MODIFIED", report) == [("team-a", "shared")]
    # a FineTuneJob's training pod is not the server's
    trainer = {"metadata": {"name": "t", "labels": {"finetune.dev/job-uid": "j", "finetune.dev/component": "trainer"}}}
    assert _event(MODELSERVER, loop, PODS, "ADDED", trainer) == []
    children = loop.servers.children(OWNER.uid)
    assert children.pods == (ServerPodObs("p1", ready=True),) and children.config_map(NAMES.loaded) == {"p1": _report()}
    assert _event(MODELSERVER, loop, MODELSERVER.resource, "DELETED", server) == []
    assert store.server(("team-a", "shared")) is None and loop.servers.key_of(OWNER.uid) is None


def test_shared_child_resources_are_streamed_by_one_selector_naming_every_component() -> None:
    found = selectors((FINETUNEJOB, FINETUNESWEEP, MODELSERVER))
    assert found[PODS] == "finetune.dev/component in (model-server,trainer,validator)"
    assert found[DEPLOYMENTS] == "finetune.dev/component in (model-server,serving)"
    assert found[CONFIG_MAPS] == "finetune.dev/server-uid,finetune.dev/component in (model-server)"
    assert all(r.plural not in ("finetunejobs", "modelservers", "finetunesweeps") for r in found)
    # alone, a kind keeps its own selector: what the FineTuneJob loop streamed before ModelServers watched pods
    alone = selectors((FINETUNEJOB,))
    assert alone[PODS] == "finetune.dev/job-uid,finetune.dev/component in (trainer,validator)"


@pytest.mark.parametrize("controller", [FINETUNEJOB, FINETUNESWEEP, MODELSERVER], ids=lambda c: c.kind)
def test_every_kind_watches_its_own_resource_whole(controller: Any) -> None:
    own = [w for w in controller.watches if w.resource == controller.resource]
    assert len(own) == 1 and own[0].owner_label == ""
