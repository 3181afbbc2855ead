"""Ownership on a real API server (issue #24, attack 1): a hostile tenant's objects never count as another's.

Two namespaces, both watched by one operator: `victim` (team A) and `hostile` (team B). Team B knows A's
FineTuneJob uid (it is in every MLflow run's tags) and creates what the attacks describe: a Job and pod
labelled with A's uid whose pod reports a fake test loss; Jobs labelled with other run numbers and named
after A's Jobs; a stray labelled Job in A's own namespace; a FineTuneJob in B labelled as a trial of A's
sweep; objects under the names a ModelServer is about to use. kwok plays every pod. Each test fails on an
operator that decides ownership by label (main before the fix) and passes when only the controller
ownerReference in the owner's namespace counts (operator/finetune_operator/api/ownership.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.support.crds import install_crd
from tests.support.kwok import KWOK_NODE_SELECTOR, KWOK_TOLERATION

from .conftest import CRD_PATH, GROUP, VERSION, Jobs, Operator, ftj_manifest, kwok_annotations, success_message
from .conftest import wait_for as _wait_for

pytestmark = pytest.mark.cluster

FAKE_LOSS = 0.0123  # what the hostile pod reports; A's own run reports 1.4
SETTLE = 6.0  # seconds the operator gets to act on the hostile objects (the attacks took effect within 3 s)


@pytest.fixture
def two_teams(
    operator_factory: Callable[..., Operator], namespace: str, other_namespace: str, cluster: Any, crd: str
) -> Iterator[tuple[str, str]]:
    """(victim, hostile): the operator watches both, as on a shared cluster."""
    install_crd(cluster.api_client, CRD_PATH.parent / "finetunesweep.yaml")
    operator_factory(namespace, other_namespace, args=["--backoff-limit", "2"])
    yield namespace, other_namespace


def _trainer_job(
    name: str, uid: str, run: int, *, finish: str = "", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Job that looks like a training Job of the FineTuneJob with `uid` by its labels (and nothing else); its
    kwok pod ends with `finish` as its termination message when given, else keeps running."""
    pod_labels = {
        "finetune.dev/job-uid": uid,
        "finetune.dev/run": str(run),
        "finetune.dev/component": "trainer",
        **(labels or {}),
    }
    annotations = kwok_annotations(0, finish, delay="300ms") if finish else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": KWOK_NODE_SELECTOR,
                    "tolerations": [KWOK_TOLERATION],
                    "containers": [{"name": "trainer", "image": "registry.local/not-a-trainer:1"}],
                },
            },
        },
    }


def _fake_success() -> str:
    return success_message(FAKE_LOSS)


def _pod_succeeded(cluster: Any, namespace: str, job: str) -> bool:
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items
    return any(p.status.phase == "Succeeded" for p in pods)


def _uid(jobs: Jobs, namespace: str, name: str) -> str:
    return str(jobs.get(namespace, name)["metadata"]["uid"])


def _job_uid(cluster: Any, namespace: str, name: str) -> str | None:
    try:
        return str(cluster.batch.read_namespaced_job(name, namespace).metadata.uid)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    return _wait_for(what, probe, timeout=timeout)


def test_a_labelled_job_in_another_namespace_never_trains_a_run(
    two_teams: tuple[str, str], jobs: Jobs, cluster: Any
) -> None:
    victim, hostile = two_teams
    jobs.create(victim, ftj_manifest("victim"))
    jobs.wait_phase(victim, "victim", "Training")
    real_pod = jobs.running_pod(victim, "victim-r1")
    uid = _uid(jobs, victim, "victim")

    cluster.batch.create_namespaced_job(hostile, _trainer_job("evil-r1", uid, 1, finish=_fake_success()))
    wait_for("the hostile pod finished", lambda: _pod_succeeded(cluster, hostile, "evil-r1"))
    time.sleep(SETTLE)
    status = jobs.status(victim, "victim")
    assert status["phase"] == "Training", status
    assert not status.get("metrics"), status

    # A's own pod still decides A's run: its metrics, not the hostile pod's
    jobs.finish_pod(victim, real_pod.metadata.name, 0, success_message(1.4))
    done = jobs.wait_phase(victim, "victim", "Succeeded")
    assert done["metrics"]["test"]["loss"] == 1.4


def test_forged_run_numbers_never_make_the_operator_delete_jobs_in_the_victims_namespace(
    two_teams: tuple[str, str], jobs: Jobs, cluster: Any
) -> None:
    victim, hostile = two_teams
    # an unrelated Job of team A's, and A's FineTuneJob training
    cluster.batch.create_namespaced_job(victim, _trainer_job("nightly-etl", "not-a-finetunejob", 1))
    jobs.create(victim, ftj_manifest("victim"))
    jobs.wait_phase(victim, "victim", "Training")
    uid = _uid(jobs, victim, "victim")
    before = {name: _job_uid(cluster, victim, name) for name in ("nightly-etl", "victim-r1")}
    assert all(before.values())

    # Jobs in B named after A's, labelled as other runs of A's FineTuneJob: "retire them" would delete A's
    for name, run in (("nightly-etl", 7), ("victim-r1", 5)):
        cluster.batch.create_namespaced_job(hostile, _trainer_job(name, uid, run))
    time.sleep(SETTLE)
    after = {name: _job_uid(cluster, victim, name) for name in before}
    assert after == before, "a Job in the victim's namespace was deleted (or replaced)"
    assert jobs.status(victim, "victim")["run"] == 1
    # and B's own Jobs are not the operator's to delete either
    assert _job_uid(cluster, hostile, "nightly-etl") and _job_uid(cluster, hostile, "victim-r1")


def test_a_stray_labelled_job_in_the_owners_namespace_is_not_adopted(
    two_teams: tuple[str, str], jobs: Jobs, cluster: Any
) -> None:
    victim, _ = two_teams
    # the FineTuneJob waits for its credentials Secret: no Job of its own exists
    jobs.create(victim, ftj_manifest("victim", storage={"credentialsSecret": "not-yet"}))
    wait_for("SecretMissing", lambda: jobs.status(victim, "victim").get("error", {}).get("code") == "SecretMissing")
    uid = _uid(jobs, victim, "victim")

    stray = cluster.batch.create_namespaced_job(victim, _trainer_job("stray", uid, 1, finish=_fake_success()))
    wait_for(
        "the stray pod finished (or the stray Job deleted)",
        lambda: _pod_succeeded(cluster, victim, "stray") or _job_uid(cluster, victim, "stray") is None,
    )
    time.sleep(SETTLE)
    assert _job_uid(cluster, victim, "stray") == stray.metadata.uid, "the stray Job was deleted or replaced"
    status = jobs.status(victim, "victim")
    assert status["phase"] == "Pending" and status["error"]["code"] == "SecretMissing", status
    assert not status.get("metrics"), status


def test_a_fine_tune_job_in_another_namespace_is_not_a_trial_of_the_sweep(
    two_teams: tuple[str, str], jobs: Jobs, cluster: Any
) -> None:
    victim, hostile = two_teams
    template = ftj_manifest("template")["spec"]
    sweep = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneSweep",
        "metadata": {"name": "lr"},
        "spec": {
            "template": template,
            "parameters": [{"path": "hyperparameters.learningRate", "values": [1e-4]}],
            "parallelism": 1,
            "publishWinner": True,
        },
    }
    created = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, victim, "finetunesweeps", sweep)
    sweep_uid = created["metadata"]["uid"]
    jobs.running_pod(victim, "lr-t0-r1")  # A's trial is training

    # B's FineTuneJob of the trial's name, labelled as trial 0 of A's sweep, trained (by the operator, in B)
    # to a fake result
    forged = ftj_manifest("lr-t0", podMetadata={"annotations": kwok_annotations(0, _fake_success(), "200ms")})
    forged["metadata"]["labels"] = {"finetune.dev/sweep-uid": sweep_uid, "finetune.dev/trial": "0"}
    jobs.create(hostile, forged)
    jobs.wait_phase(hostile, "lr-t0", "Succeeded")
    time.sleep(SETTLE)

    status = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, victim, "finetunesweeps", "lr")["status"]
    assert status["phase"] == "Running" and not status.get("winner") and not status.get("leaderboard"), status
    trial = jobs.get(victim, "lr-t0")
    assert not (trial["metadata"].get("annotations") or {}).get("finetune.dev/published-by-sweep")
    assert not trial["spec"].get("serving", {}).get("enabled")
    assert jobs.status(victim, "lr-t0")["phase"] == "Training"


def test_a_model_server_never_takes_over_objects_of_its_names(
    two_teams: tuple[str, str], jobs: Jobs, cluster: Any
) -> None:
    victim, _ = two_teams
    # someone else's ConfigMap and Service under the names the server's objects will have
    cluster.core.create_namespaced_config_map(
        victim,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="shared-server-adapters"), data={"mine": "keep"}),
    )
    cluster.core.create_namespaced_service(
        victim,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="shared-server"),
            spec=client.V1ServiceSpec(
                selector={"app": "theirs"}, ports=[client.V1ServicePort(name="theirs", port=1234)]
            ),
        ),
    )
    server = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelServer",
        "metadata": {"name": "shared"},
        "spec": {
            "baseModelUri": "s3://models/tiny/",
            "replicas": 1,
            "nodeSelector": KWOK_NODE_SELECTOR,
            "tolerations": [KWOK_TOLERATION],
        },
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, victim, "modelservers", server)

    def ready() -> dict[str, Any] | None:
        body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, victim, "modelservers", "shared")
        return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), None)

    def theirs_intact() -> bool:
        service = cluster.core.read_namespaced_service("shared-server", victim)
        config = cluster.core.read_namespaced_config_map("shared-server-adapters", victim)
        return bool(
            not service.metadata.owner_references
            and service.spec.selector == {"app": "theirs"}
            and [p.port for p in service.spec.ports] == [1234]
            and not config.metadata.owner_references
            and config.data == {"mine": "keep"}
        )

    wait_for("the server's verdict, or its objects applied", lambda: ready() or not theirs_intact())
    time.sleep(SETTLE)
    assert theirs_intact(), "another owner's Service or ConfigMap was taken over"
    condition = ready()
    assert condition is not None and condition["status"] == "False" and condition["reason"] == "NameTaken"
    assert "Service" in condition["message"] and "shared-server" in condition["message"]

    # the name freed, the server takes its own objects
    cluster.core.delete_namespaced_service("shared-server", victim)
    cluster.core.delete_namespaced_config_map("shared-server-adapters", victim)
    wait_for("the server Ready", lambda: (c := ready()) and c["reason"] != "NameTaken" and c)
    owners = cluster.core.read_namespaced_service("shared-server", victim).metadata.owner_references
    assert [o.kind for o in owners] == ["ModelServer"]
    desired = cluster.core.read_namespaced_config_map("shared-server-adapters", victim)
    assert json.loads(desired.data["adapters.json"])["adapters"] == []


def test_a_pod_with_a_model_servers_labels_is_not_one_of_its_replicas(
    two_teams: tuple[str, str], jobs: Jobs, cluster: Any
) -> None:
    victim, _ = two_teams
    server = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelServer",
        "metadata": {"name": "shared"},
        "spec": {
            "baseModelUri": "s3://models/tiny/",
            "replicas": 1,
            "nodeSelector": KWOK_NODE_SELECTOR,
            "tolerations": [KWOK_TOLERATION],
        },
    }
    created = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, victim, "modelservers", server)

    def status() -> dict[str, Any]:
        body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, victim, "modelservers", "shared")
        return dict(body.get("status") or {})

    wait_for("one replica ready", lambda: status().get("readyReplicas") == 1)
    (deployment,) = cluster.apps.list_namespaced_deployment(victim).items
    labels = dict(deployment.spec.selector.match_labels)
    assert labels["finetune.dev/server-uid"] == created["metadata"]["uid"]
    cluster.core.create_namespaced_pod(
        victim,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="impostor", labels=labels),
            spec=client.V1PodSpec(
                node_selector=KWOK_NODE_SELECTOR,
                tolerations=[client.V1Toleration(**KWOK_TOLERATION)],
                containers=[client.V1Container(name="server", image="registry.local/impostor:1")],
            ),
        ),
    )
    wait_for(
        "the impostor running", lambda: cluster.core.read_namespaced_pod("impostor", victim).status.phase == "Running"
    )
    # a change to the server queues a pass at once (the impostor is no replica, so its events queue nothing)
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, victim, "modelservers", "shared", {"metadata": {"annotations": {"touched": "1"}}}
    )
    time.sleep(SETTLE)
    now = status()
    assert now["readyReplicas"] == 1 and "impostor" not in [r["pod"] for r in now.get("loaded") or []], now
