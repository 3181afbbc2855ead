"""A ModelServer's pass without a cluster: snapshot (its body, the FineTuneJobs naming it, its objects as the
watches reported them) -> plan (what to create, apply, delete, which reports to drop, its status), its memory,
and the registry that routes watch events to it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH
from finetune_operator.builders.modelserver import ServerNames, ServerOwner, server_bundle
from finetune_operator.core.errors import NameTaken
from finetune_operator.core.registry import CONFIG_MAPS, DEPLOYMENTS, PODS, REPLICA_SETS, selectors
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Store
from finetune_operator.finetunejob.registration import CONTROLLER as FINETUNEJOB
from finetune_operator.finetunesweep.registration import CONTROLLER as FINETUNESWEEP
from finetune_operator.modelserver.controller import ServerReconciler
from finetune_operator.modelserver.observed import Owned, ServerChildren, ServerPodObs, server_pod_obs
from finetune_operator.modelserver.plan import NAME_TAKEN_RETRY_SECONDS, ServerSnapshot, plan
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
        "status": {"published": published, "serving": {"apiKeySecret": f"{name}-api-key", "apiKeySha256": "cd" * 32}},
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
        "NetworkPolicy",
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


def test_server_pod_observation_reads_readiness_deletion_and_its_replica_set() -> None:
    body = {
        "metadata": {"name": "p", "namespace": "team-a", "deletionTimestamp": "t", "ownerReferences": [_rs_ref("R")]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert server_pod_obs(body) == ServerPodObs("p", ready=True, deleting=True, namespace="team-a", replica_set="R")
    assert server_pod_obs({"metadata": {"name": "q"}}) == ServerPodObs("q")


def _ref(kind: str, uid: str, api_version: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": "x", "uid": uid, "controller": True}


def _server_ref(uid: str = OWNER.uid) -> dict[str, Any]:
    return _ref("ModelServer", uid, "finetune.dev/v1alpha1")


def _rs_ref(uid: str) -> dict[str, Any]:
    return _ref("ReplicaSet", uid, "apps/v1")


def test_the_server_store_keeps_the_newest_version_of_what_a_pass_wrote() -> None:
    servers = ServerStore()
    mine = Owned("team-a", "cm-uid", "u")
    servers.put_config_map(mine, "cm", "12", {"k": "new"})
    servers.put_config_map(mine, "cm", "11", {"k": "old"})  # the watch reporting an older version late
    servers.put_deployment(Owned("team-a", "d", "u"), "12", "h2")
    servers.put_deployment(Owned("team-a", "d", "u"), "11", "h1")
    children = servers.children("team-a", "u")
    assert children.config_map("cm") == {"k": "new"} and children.deployment_hash == "h2"
    servers.forget_config_map(mine, "cm")
    servers.forget_deployment(Owned("team-a", "other", "u"))  # another Deployment's deletion: not ours
    assert servers.children("team-a", "u").deployment_hash == "h2"
    servers.forget_deployment(Owned("team-a", "d", "u"))
    children = servers.children("team-a", "u")
    assert children.config_map("cm") is None and children.deployment_hash is None


def test_a_servers_objects_count_only_by_their_controller_in_its_namespace() -> None:
    """api.ownership: labels stream candidates; the controller ownerReference decides. A replica is a pod of a
    ReplicaSet that the server's own Deployment controls."""
    servers = ServerStore()
    servers.track(OWNER.uid, ("team-a", "shared"))
    assert servers.put_deployment(Owned("team-a", "D", OWNER.uid), "1", "h") == ("team-a", "shared")
    assert servers.put_replica_set(Owned("team-a", "R", "D")) == ("team-a", "shared")
    servers.put_replica_set(Owned("team-a", "R2", "someone-elses-deployment"))
    servers.put_replica_set(Owned("team-b", "R3", "D"))  # another namespace
    assert servers.put_pod(ServerPodObs("p1", True, namespace="team-a", replica_set="R")) == ("team-a", "shared")
    assert servers.put_pod(ServerPodObs("impostor", True, namespace="team-a")) is None  # no controller
    assert servers.put_pod(ServerPodObs("p2", True, namespace="team-a", replica_set="R2")) is None
    assert servers.put_pod(ServerPodObs("p3", True, namespace="team-b", replica_set="R3")) is None
    # a ConfigMap controlled by nobody, or by the server's uid in another namespace, is not the server's
    assert servers.put_config_map(Owned("team-a", "c1", ""), NAMES.adapters, "1", {"mine": "keep"}) is None
    assert servers.put_config_map(Owned("team-b", "c2", OWNER.uid), NAMES.adapters, "1", {"x": "y"}) is None
    children = servers.children("team-a", OWNER.uid)
    assert [p.name for p in children.pods] == ["p1"] and children.config_map(NAMES.adapters) is None


def test_the_server_store_drops_what_names_no_live_server_at_the_second_prune() -> None:
    servers = ServerStore()
    servers.track(OWNER.uid, ("team-a", "shared"))
    servers.put_deployment(Owned("team-a", "D", OWNER.uid), "1", "h")
    servers.put_replica_set(Owned("team-a", "R", "D"))
    servers.put_pod(ServerPodObs("p1", namespace="team-a", replica_set="R"))
    for i in range(100):  # forged: ConfigMaps naming uids no server has, pods of ReplicaSets nobody knows
        servers.put_config_map(Owned("team-b", f"c{i}", f"forged-{i}"), "cm", "1", {})
        servers.put_pod(ServerPodObs(f"x{i}", namespace="team-b", replica_set=f"rs-{i}"))
    assert servers.sizes() == (101, 1, 101)
    assert servers.prune() == 0  # an object's event may come before its owner's: one resync period of grace
    assert servers.prune() == 200 and servers.sizes() == (1, 1, 1)
    servers.forget("team-a", OWNER.uid)
    servers.prune()
    assert servers.prune() == 2 and servers.sizes() == (0, 0, 0)


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

    def meta(name: str, uid: str, ref: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
        refs = [ref] if ref else []
        return {"name": name, "namespace": "team-a", "uid": uid, "labels": labels, "ownerReferences": refs, **more}

    pod = {
        "metadata": meta("p1", "P1", _rs_ref("R")),
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    replica_set = {"metadata": meta("shared-server-abc", "R", _ref("Deployment", "D", "apps/v1"))}
    deployment = {"metadata": meta(NAMES.deployment, "D", _server_ref(), resourceVersion="6")}
    report = {"metadata": meta(NAMES.loaded, "C", _server_ref(), resourceVersion="7"), "data": {"p1": _report()}}
    assert _event(MODELSERVER, loop, PODS, "ADDED", pod) == []  # its ReplicaSet is not known yet
    assert _event(MODELSERVER, loop, REPLICA_SETS, "ADDED", replica_set) == []  # nor its Deployment
    assert _event(MODELSERVER, loop, DEPLOYMENTS, "ADDED", deployment) == [("team-a", "shared")]
    assert _event(MODELSERVER, loop, PODS, "MODIFIED", pod) == [("team-a", "shared")]
    assert _event(MODELSERVER, loop, CONFIG_MAPS, "MODIFIED", report) == [("team-a", "shared")]
    # a FineTuneJob's training pod is not the server's
    trainer = {"metadata": {"name": "t", "labels": {"finetune.dev/job-uid": "j", "finetune.dev/component": "trainer"}}}
    assert _event(MODELSERVER, loop, PODS, "ADDED", trainer) == []
    # a pod carrying the server's labels, controlled by no ReplicaSet of its Deployment, is not a replica
    assert _event(MODELSERVER, loop, PODS, "ADDED", {"metadata": meta("impostor", "I", None)}) == []
    children = loop.servers.children("team-a", OWNER.uid)
    assert [p.name for p in children.pods] == ["p1"] and children.config_map(NAMES.loaded) == {"p1": _report()}
    assert _event(MODELSERVER, loop, MODELSERVER.resource, "DELETED", server) == []
    assert store.server(("team-a", "shared")) is None and loop.servers.key_of(OWNER.uid) is None


def test_a_name_held_by_another_owner_is_reported_and_retried() -> None:
    class Taken:
        """A Kube whose every create and apply finds the name held by someone else."""

        def __init__(self) -> None:
            self.patched: list[dict[str, Any]] = []

        def create(self, manifest: dict[str, Any]) -> None:
            raise NameTaken(f"{manifest['kind']} team-a/{manifest['metadata']['name']} exists and is not ours")

        apply = create

        def patch_status(self, _ns: str, _name: str, patch: dict[str, Any], _rv: str, kind: str) -> dict[str, Any]:
            self.patched.append(patch)
            return {**_body(), "metadata": {**_body()["metadata"], "resourceVersion": "9"}, "status": patch}

    store, kube = Store(), Taken()
    loop = ServerReconciler(kube=kube, store=store, settings=SETTINGS)  # type: ignore[arg-type]
    store.put_server({**_body(), "metadata": {**_body()["metadata"], "resourceVersion": "5"}})
    assert loop.reconcile(("team-a", "shared")) == NAME_TAKEN_RETRY_SECONDS
    (patch,) = kube.patched
    (ready,) = patch["conditions"]
    # the first object it makes is its generated API key's Secret: not ours, so named and never overwritten
    assert ready["status"] == "False" and ready["reason"] == "NameTaken" and "Secret" in ready["message"]
    assert NAMES.api_key in ready["message"]


def test_shared_child_resources_are_streamed_by_one_selector_naming_every_component() -> None:
    found = selectors((FINETUNEJOB, FINETUNESWEEP, MODELSERVER))
    assert found[PODS] == "finetune.dev/component in (model-server,trainer,validator)"
    assert found[DEPLOYMENTS] == "finetune.dev/component in (model-server,serving)"
    assert found[CONFIG_MAPS] == "finetune.dev/component in (model-server,trainer-progress)"
    assert found[REPLICA_SETS] == "finetune.dev/server-uid,finetune.dev/component in (model-server)"
    assert all(r.plural not in ("finetunejobs", "modelservers", "finetunesweeps") for r in found)
    # alone, a kind keeps its own selector: what the FineTuneJob loop streamed before ModelServers watched pods
    alone = selectors((FINETUNEJOB,))
    assert alone[PODS] == "finetune.dev/job-uid,finetune.dev/component in (trainer,validator)"


@pytest.mark.parametrize("controller", [FINETUNEJOB, FINETUNESWEEP, MODELSERVER], ids=lambda c: c.kind)
def test_every_kind_watches_its_own_resource_whole(controller: Any) -> None:
    own = [w for w in controller.watches if w.resource == controller.resource]
    assert len(own) == 1 and own[0].owner_label == ""
