"""FineTuneSweep on a real API server: trials made with the right values, at most `parallelism` unfinished,
queued (the test plays Kueue, as in test_kueue.py), their results scripted through kwok's pods, a leaderboard
and a winner chosen on validation loss only, the winner published, an operator killed mid-sweep that neither
duplicates nor loses a trial, early stopping, and the admission rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.support.crds import install_crd
from tests.support.sweeps import LONGEST_NAME, largest_statuses, largest_sweep_spec

from .conftest import CRD_PATH, Jobs, Operator, ftj_manifest, wait_for
from .test_kueue import GPU_JOB, gpu_queue, kueue  # noqa: F401 - the real Kueue's fixtures, by name

pytestmark = pytest.mark.cluster

SWEEP_CRD = CRD_PATH.parent / "finetunesweep.yaml"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunesweeps"
LR = "hyperparameters.learningRate"
# the scripted outcome of each learning rate: (validation loss, test loss). 3e-4 wins on validation; 1e-3 has
# the best test loss, which selection must never see.
OUTCOMES = {1e-4: (1.30, 1.25), 3e-4: (0.90, 1.10), 1e-3: (1.10, 0.50), 3e-3: (1.60, 1.70)}
FINISHED = ("Succeeded", "Failed", "Serving", "Publishing")


@pytest.fixture(scope="module")
def sweep_crd(cluster: Any, crd: str) -> str:
    """Install (or replace) the FineTuneSweep CRD next to the FineTuneJob one."""
    return install_crd(cluster.api_client, SWEEP_CRD)


def sweep_manifest(name: str, **spec: Any) -> dict[str, Any]:
    template = ftj_manifest("template", evaluation={"gate": [{"metric": "test_loss", "max": 1.5}]})["spec"]
    body: dict[str, Any] = {
        "template": template,
        "parameters": [{"path": LR, "values": list(OUTCOMES)}],
        "parallelism": 2,
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneSweep", "metadata": {"name": name}, "spec": body}


class Sweeps:
    def __init__(self, jobs: Jobs, namespace: str) -> None:
        self.jobs, self.namespace, self.custom = jobs, namespace, jobs.cluster.custom

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return created

    def status(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return dict(body.get("status") or {})

    def trials(self, name: str) -> list[dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(
            "finetune.dev", "v1alpha1", self.namespace, "finetunejobs", label_selector=f"finetune.dev/sweep={name}"
        )
        return sorted(found["items"], key=lambda t: int(t["metadata"]["labels"]["finetune.dev/trial"]))

    def admit_and_finish(self, trial: dict[str, Any], outcome: Callable[[float], str] | None = None) -> bool:
        """Play Kueue (admit the trial's suspended Job) and the trainer (finish its running pod with the
        outcome of its learning rate). True once the pod was told to finish."""
        name = trial["metadata"]["name"]
        try:
            job = self.jobs.cluster.batch.read_namespaced_job(f"{name}-r1", self.namespace)
        except client.ApiException:
            return False
        if job.spec.suspend:
            self.jobs.cluster.batch.patch_namespaced_job(
                job.metadata.name, self.namespace, {"spec": {"suspend": False}}, field_manager="kueue-sim"
            )
            return False
        if outcome is None:
            return False
        for pod in self.jobs.pods(self.namespace, job.metadata.name):
            annotations = pod.metadata.annotations or {}
            if pod.status.phase == "Running" and "kwok.finetune.dev/exit-code" not in annotations:
                lr = float(trial["spec"]["hyperparameters"]["learningRate"])
                self.jobs.finish_pod(self.namespace, pod.metadata.name, 0, outcome(lr))
                return True
        return False


def scripted(lr: float) -> str:
    validation, test = OUTCOMES[lr]
    metrics = {"validation": {"loss": validation}, "test": {"loss": test}}
    return json.dumps({"code": "Succeeded", "message": "trained", "run": 1, "metrics": metrics})


def training(sweeps: Sweeps, name: str, count: int) -> list[dict[str, Any]] | None:
    """Admit every queued trial; the trials once `count` of them are Training."""
    trials = sweeps.trials(name)
    for trial in trials:
        sweeps.admit_and_finish(trial)
    phases = [(t.get("status") or {}).get("phase") for t in trials]
    return trials if len(trials) == count and all(p == "Training" for p in phases) else None


def _unfinished(trials: list[dict[str, Any]]) -> int:
    return sum(1 for t in trials if (t.get("status") or {}).get("phase") not in FINISHED)


def test_sweep_runs_queued_trials_within_parallelism_survives_a_kill_and_publishes_the_validation_winner(
    operator_factory: Callable[..., Operator], sweep_crd: str, jobs: Jobs, namespace: str
) -> None:
    sweeps = Sweeps(jobs, namespace)
    operator = operator_factory(namespace, args=["--backoff-limit", "2"])
    sweeps.create(
        sweep_manifest(
            "sw", template={**sweep_manifest("x")["spec"]["template"], "queueName": "team-gpus"}, publishWinner=True
        )
    )
    first = wait_for("two trials", lambda: t if len(t := sweeps.trials("sw")) >= 2 else None, timeout=60)
    assert [t["metadata"]["name"] for t in first] == ["sw-t0", "sw-t1"]
    assert [t["spec"]["hyperparameters"]["learningRate"] for t in first] == [1e-4, 3e-4]
    for trial in first:
        assert trial["spec"]["queueName"] == "team-gpus" and trial["spec"]["serving"]["enabled"] is False
        assert trial["spec"]["evaluation"]["gate"] == []
        (owner,) = trial["metadata"]["ownerReferences"]
        assert owner["kind"] == "FineTuneSweep" and owner["name"] == "sw"
    for name in ("sw-t0", "sw-t1"):  # queued: the Job waits, suspended, for Kueue to admit it
        wait_for(f"{name} queued", lambda n=name: (jobs.status(namespace, n).get("phase") == "Queued") or None)
        assert jobs.cluster.batch.read_namespaced_job(f"{name}-r1", namespace).spec.suspend is True
    assert len(sweeps.trials("sw")) == 2  # the sweep has seen both queued: parallelism holds it at two

    # both admitted and running; t0 finishes while the operator is down (killed, as when its node dies)
    wait_for("t0 and t1 training", lambda: training(sweeps, "sw", 2), timeout=90)
    uids = {t["metadata"]["name"]: t["metadata"]["uid"] for t in sweeps.trials("sw")}
    operator.kill()
    wait_for("t0's pod told to finish", lambda: sweeps.admit_and_finish(sweeps.trials("sw")[0], scripted) or None)
    operator = operator_factory(namespace, args=["--backoff-limit", "2"])

    seen_max = 0
    finished: set[str] = {"sw-t0"}

    def progress() -> dict[str, Any] | None:
        nonlocal seen_max
        trials = sweeps.trials("sw")
        seen_max = max(seen_max, _unfinished(trials))
        for trial in trials:
            if trial["metadata"]["name"] not in finished and sweeps.admit_and_finish(trial, scripted):
                finished.add(trial["metadata"]["name"])
        status = sweeps.status("sw")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for("the sweep to finish and publish", progress, timeout=240)
    trials = sweeps.trials("sw")
    assert [t["metadata"]["name"] for t in trials] == ["sw-t0", "sw-t1", "sw-t2", "sw-t3"]  # none twice
    assert {n: u for n, u in ((t["metadata"]["name"], t["metadata"]["uid"]) for t in trials) if n in uids} == uids
    assert seen_max <= 2
    assert status["phase"] == "Succeeded", status
    assert [(e["name"], e["objective"]) for e in status["leaderboard"]] == [
        ("sw-t1", 0.9),
        ("sw-t2", 1.1),
        ("sw-t0", 1.3),
        ("sw-t3", 1.6),
    ]
    winner = status["winner"]
    assert winner["name"] == "sw-t1" and winner["parameters"] == {LR: 3e-4}
    assert winner["testMetrics"] == {"test_loss": 1.1} and winner["gate"]["passed"] is True
    assert winner["published"]["phase"] == "Serving" and winner["published"]["endpoint"]
    assert status["summary"] == "4/4"
    published = jobs.get(namespace, "sw-t1")
    assert not published["metadata"].get("ownerReferences")  # its own FineTuneJob now: deleting the sweep keeps it
    assert published["status"]["run"] == 1  # promoted, not retrained
    assert published["spec"]["evaluation"]["gate"] == [{"metric": "test_loss", "max": 1.5}]

    def events() -> list[Any] | None:  # kubectl describe fts sw
        found = jobs.cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.kind=FineTuneSweep,involvedObject.name=sw"
        ).items
        return found if any(e.reason == "Succeeded" for e in found) else None

    reasons = [e.reason for e in wait_for("the sweep's Succeeded event", events)]
    assert reasons.count("TrialCreated") == 4  # each trial created once, across the restart too
    succeeded = next(e for e in events() or [] if e.reason == "Succeeded")
    assert "winner sw-t1" in succeeded.message and "test_loss=1.1" in succeeded.message


def test_admission_refuses_test_objectives_and_template_edits(sweep_crd: str, jobs: Jobs, namespace: str) -> None:
    sweeps = Sweeps(jobs, namespace)
    with pytest.raises(client.ApiException) as refused:
        sweeps.create(sweep_manifest("bad", objective={"metric": "test_loss"}))
    assert refused.value.status == 422 and "the test split stays a fair final check" in str(refused.value.body)
    with pytest.raises(client.ApiException) as refused:
        sweeps.create(sweep_manifest("bad", parameters=[{"path": "method.lora.rank", "values": [8.5]}]))
    assert refused.value.status == 422 and "whole numbers" in str(refused.value.body)
    with pytest.raises(client.ApiException) as refused:
        sweeps.create(sweep_manifest("bad", algorithm="random"))
    assert "random search needs maxTrials" in str(refused.value.body)
    with pytest.raises(client.ApiException) as refused:  # the template is checked like a FineTuneJob
        sweeps.create(
            sweep_manifest(
                "bad",
                template={
                    **sweep_manifest("x")["spec"]["template"],
                    "method": {"type": "qlora"},
                    "resources": {"gpus": 0},
                },
            )
        )
    assert "qlora needs spec.resources.gpus" in str(refused.value.body)

    sweeps.create(sweep_manifest("ok"))
    custom = jobs.cluster.custom
    with pytest.raises(client.ApiException) as refused:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "ok", {"spec": {"template": {"hyperparameters": {"epochs": 1}}}}
        )
    assert refused.value.status == 422 and "create a new FineTuneSweep" in str(refused.value.body)
    with pytest.raises(client.ApiException):
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "ok", {"spec": {"parameters": [{"path": LR, "values": [1e-5]}]}}
        )
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ok", {"spec": {"parallelism": 3, "maxTrials": 2}}
    )


def test_the_largest_status_of_a_1000_trial_sweep_is_stored_and_1001_trials_are_refused(
    sweep_crd: str, jobs: Jobs, namespace: str
) -> None:
    """etcd refuses an object over its request limit whole: a sweep whose status outgrew it could never record
    its last trials or its winner. The planner's largest status (tests/support/sweeps.py) must be stored."""
    sweeps, custom = Sweeps(jobs, namespace), jobs.cluster.custom
    template = sweep_manifest("x")["spec"]["template"]
    with pytest.raises(client.ApiException) as refused:
        sweeps.create(sweep_manifest("too-many", **{**largest_sweep_spec(template), "maxTrials": 1001}))
    assert refused.value.status == 422 and "maxTrials" in str(refused.value.body)
    sweeps.create(sweep_manifest(LONGEST_NAME, **largest_sweep_spec(template)))
    for status in largest_statuses(template):
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, LONGEST_NAME, {"status": status}
        )
        stored = sweeps.status(LONGEST_NAME)
        assert len(stored["trials"]) == 1000 and stored["trials"] == status["trials"]


def test_early_stopping_suspends_a_clearly_worse_trial(
    operator: Operator, sweep_crd: str, jobs: Jobs, namespace: str
) -> None:
    """The trainer's validation-loss progress is written where the trainer writes it (its progress ConfigMap, which
    the operator copies into the trial's status.progress)."""
    sweeps = Sweeps(jobs, namespace)
    spec = {
        "parameters": [{"path": LR, "values": [1e-4, 3e-4, 1e-3]}],
        "parallelism": 3,
        "earlyStopping": {"afterSteps": 10, "minTrials": 2},
    }
    sweeps.create(sweep_manifest("es", **spec))
    wait_for("three trials training", lambda: training(sweeps, "es", 3), timeout=90)

    def report(trial: str, step: int, loss: float) -> None:
        progress = {"run": 1, "stage": "training", "step": step + 3, "validationStep": step, "validationLoss": loss}
        jobs.cluster.core.patch_namespaced_config_map(
            f"{trial}-progress", namespace, {"data": {"progress.json": json.dumps(progress)}}
        )
        wait_for(
            f"{trial} step {step} in the sweep's curve",
            lambda: (
                any(
                    t["name"] == trial and [float(step), loss] in (t.get("curve") or [])
                    for t in sweeps.status("es").get("trials") or []
                )
                or None
            ),
        )

    for trial, loss in (("es-t0", 1.5), ("es-t1", 1.7), ("es-t2", 2.5)):
        report(trial, 10, loss)
    for trial in ("es-t0", "es-t1"):
        wait_for(
            f"{trial} finished",
            lambda t=trial: (
                sweeps.admit_and_finish(
                    next(x for x in sweeps.trials("es") if x["metadata"]["name"] == t), scripted_loss(1.0)
                )
                or None
            ),
        )
    stopped = wait_for(
        "es-t2 stopped", lambda: (t := jobs.get(namespace, "es-t2"))["spec"].get("suspend") and t, timeout=60
    )
    assert "median rule" in stopped["metadata"]["annotations"]["finetune.dev/stopped-by-sweep"]
    status = wait_for(
        "the sweep to finish", lambda: (s := sweeps.status("es")).get("phase") == "Succeeded" and s, timeout=60
    )
    record = {t["name"]: t for t in status["trials"]}
    assert record["es-t2"]["phase"] == "Stopped" and "median" in record["es-t2"]["message"]
    assert [e["name"] for e in status["leaderboard"]] == ["es-t0", "es-t1"]

    # a finished trial deleted by hand is remembered, not run again (the watch reports the deletion)
    jobs.cluster.custom.delete_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "finetunejobs", "es-t0")
    wait_for("es-t0 gone", lambda: "es-t0" not in [t["metadata"]["name"] for t in sweeps.trials("es")] or None)
    jobs.cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "es", {"spec": {"parallelism": 2}}
    )
    after = wait_for("the edit observed", lambda: (s := sweeps.status("es")).get("observedGeneration") == 2 and s)
    assert [t["metadata"]["name"] for t in sweeps.trials("es")] == ["es-t1", "es-t2"]
    assert after["winner"]["name"] == "es-t0" and after["leaderboard"][0]["name"] == "es-t0"


def scripted_loss(validation: float) -> Callable[[float], str]:
    def outcome(lr: float) -> str:
        metrics = {"validation": {"loss": validation + lr}, "test": {"loss": 1.0}}
        return json.dumps({"code": "Succeeded", "message": "trained", "run": 1, "metrics": metrics})

    return outcome


def test_a_finetunejob_in_the_way_of_a_trial_name_is_never_adopted(
    operator: Operator, sweep_crd: str, jobs: Jobs, namespace: str
) -> None:
    """A user's FineTuneJob (or an earlier sweep's published winner) named like a trial stays untouched."""
    mine = jobs.create(namespace, ftj_manifest("clash-t0"))
    Sweeps(jobs, namespace).create(sweep_manifest("clash"))
    status = wait_for("the sweep to fail", lambda: (s := Sweeps(jobs, namespace).status("clash")).get("error") and s)
    assert status["phase"] == "Failed" and "clash-t0" in status["error"]["message"]
    assert "not a trial of this sweep" in status["error"]["message"]
    after = jobs.get(namespace, "clash-t0")
    assert after["metadata"]["uid"] == mine["metadata"]["uid"] and not after["metadata"].get("ownerReferences")
    assert after["spec"]["hyperparameters"] == mine["spec"]["hyperparameters"]


@pytest.mark.timeout(3600)  # a cold cache builds Kueue first (as in test_kueue.py)
def test_real_kueue_admits_the_trials_its_quota_allows(
    request: pytest.FixtureRequest, sweep_crd: str, operator: Operator, jobs: Jobs, namespace: str
) -> None:
    """Trials are FineTuneJobs like any other: with a quota of one 8-GPU trial, Kueue (the real one, a local
    process) runs them one at a time although the sweep's parallelism lets two wait."""
    queue = request.getfixturevalue("gpu_queue")
    sweeps = Sweeps(jobs, namespace)
    template = {**sweep_manifest("x")["spec"]["template"], "queueName": queue, "resources": GPU_JOB}
    sweeps.create(sweep_manifest("kq", template=template, parameters=[{"path": LR, "values": [1e-4, 3e-4, 1e-3]}]))
    seen: list[list[str]] = []
    told: set[str] = set()

    def progress() -> dict[str, Any] | None:
        trials = sweeps.trials("kq")
        phases = [(t.get("status") or {}).get("phase", "") for t in trials]
        seen.append(phases)
        for trial, phase in zip(trials, phases, strict=True):
            if phase == "Training" and sweeps.admit_and_finish(trial, scripted):  # Kueue admitted it: finish it
                told.add(trial["metadata"]["name"])
        status = sweeps.status("kq")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for("the sweep to finish under Kueue", progress, timeout=180)
    assert max(p.count("Training") for p in seen) == 1  # the quota holds them to one at a time
    assert any(p.count("Queued") == 1 and p.count("Training") == 1 for p in seen)  # the other one waits for it
    assert told == {"kq-t0", "kq-t1", "kq-t2"}
    assert status["winner"]["name"] == "kq-t1" and status["summary"] == "3/3"
