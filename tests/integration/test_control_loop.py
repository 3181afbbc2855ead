"""The operator's control loop on a real API server, with kwok pods standing in for the trainer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Jobs, Operator, ftj_manifest, kwok_annotations, success_message, wait_for

pytestmark = pytest.mark.cluster

BAD_DATA = json.dumps({"code": "DatasetInvalid", "message": "train.jsonl line 17: missing field 'messages'"})


def _pod_template_annotations(**kw: Any) -> dict[str, Any]:
    return {"annotations": kwok_annotations(**kw)}


def test_success_ends_succeeded_with_metrics(operator: Operator, jobs: Jobs, namespace: str, s3_secret: str) -> None:
    manifest = ftj_manifest(
        "ok",
        storage={"credentialsSecret": s3_secret},
        evaluation={"gate": [{"metric": "test_loss", "max": 2.0}]},
        podMetadata=_pod_template_annotations(exit_code=0, message=success_message(1.4)),
    )
    jobs.create(namespace, manifest)
    status = jobs.wait_phase(namespace, "ok", "Succeeded")
    assert status["metrics"]["test"]["loss"] == 1.4
    assert status["gate"]["passed"] is True and status.get("error") is None
    assert status["run"] == 1 and status["observedGeneration"] == 1
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Trained"]["status"] == "True" and conditions["GatePassed"]["status"] == "True"
    assert status["artifacts"]["model"] == "s3://artifacts/ok/run-1/model/"
    job = jobs.training_jobs(namespace, "ok")[0]
    container = job.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert job.spec.template.spec.service_account_name == "ok-trainer"
    events = jobs.cluster.core.list_namespaced_event(namespace, field_selector="involvedObject.name=ok").items
    assert {"Succeeded"} <= {e.reason for e in events}


def test_user_error_fails_at_once_with_one_pod(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(
        namespace,
        ftj_manifest("baddata", podMetadata=_pod_template_annotations(exit_code=42, message=BAD_DATA)),
    )
    status = jobs.wait_phase(namespace, "baddata", "Failed")
    assert status["error"]["code"] == "DatasetInvalid" and "line 17" in status["error"]["message"]
    assert len(jobs.pods(namespace, "baddata-r1")) == 1
    assert jobs.training_jobs(namespace, "baddata")[0].status.failed == 1


def test_infrastructure_failures_retry_to_the_limit(operator: Operator, jobs: Jobs, namespace: str) -> None:
    crash = json.dumps({"code": "InternalError", "message": "CUDA error: an illegal memory access"})
    jobs.create(namespace, ftj_manifest("flaky", podMetadata=_pod_template_annotations(exit_code=1, message=crash)))
    status = jobs.wait_phase(namespace, "flaky", "Failed", timeout=120)
    assert status["error"]["code"] == "BackoffLimitExceeded" and "CUDA error" in status["error"]["message"]
    assert len(jobs.pods(namespace, "flaky-r1")) == 3  # the first attempt plus --backoff-limit 2 retries


def test_disrupted_pod_does_not_use_up_a_retry(
    operator_factory: Callable[..., Operator], jobs: Jobs, namespace: str
) -> None:
    from kubernetes import client

    operator_factory(namespace, args=["--backoff-limit", "0"])
    jobs.create(namespace, ftj_manifest("evicted"))
    first = jobs.running_pod(namespace, "evicted-r1")
    jobs.cluster.core.create_namespaced_pod_eviction(
        first.metadata.name,
        namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=first.metadata.name, namespace=namespace)),
    )
    second = wait_for(
        "a replacement pod",
        lambda: next(
            (
                p
                for p in jobs.pods(namespace, "evicted-r1")
                if p.metadata.name != first.metadata.name and p.status.phase == "Running"
            ),
            None,
        ),
    )
    jobs.wait_phase(namespace, "evicted", "Training")
    assert not jobs.training_jobs(namespace, "evicted")[0].status.failed  # the disruption was not counted
    jobs.finish_pod(namespace, second.metadata.name, 0, success_message())
    jobs.wait_phase(namespace, "evicted", "Succeeded")


def test_changed_learning_rate_starts_run_two_and_removes_run_one(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, ftj_manifest("lr"))
    jobs.running_pod(namespace, "lr-r1")
    jobs.wait_phase(namespace, "lr", "Training")
    jobs.patch_spec(namespace, "lr", {"hyperparameters": {"learningRate": 1e-4}})
    wait_for("run 2", lambda: jobs.status(namespace, "lr").get("run") == 2)
    wait_for(
        "only run 2's Job",
        lambda: [j.metadata.name for j in jobs.training_jobs(namespace, "lr")] == ["lr-r2"],
    )
    config = jobs.cluster.core.read_namespaced_config_map("lr-r2-config", namespace).data["config.json"]
    assert json.loads(config)["output"]["runUri"] == "s3://artifacts/lr/run-2/"
    assert json.loads(config)["hyperparameters"]["learningRate"] == 1e-4
    jobs.wait_phase(namespace, "lr", "Training")


def _memory_limit(job: Any) -> str:
    return str(job.spec.template.spec.containers[0].resources.limits["memory"])


def test_memory_change_replaces_the_job_and_resumes_the_same_run(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    """Placement is not run identity: more memory gets new pods for run 1, only after the old ones are gone."""
    jobs.create(namespace, ftj_manifest("grow"))
    old_pod = jobs.running_pod(namespace, "grow-r1")
    jobs.wait_phase(namespace, "grow", "Training")
    old_job = jobs.training_jobs(namespace, "grow")[0]
    assert _memory_limit(old_job) == "1Gi"
    jobs.patch_spec(namespace, "grow", {"resources": {"memory": "2Gi"}})
    new_job = wait_for(
        "run 1's Job replaced",
        lambda: next(
            (j for j in jobs.training_jobs(namespace, "grow") if j.metadata.uid != old_job.metadata.uid), None
        ),
    )
    assert new_job.metadata.name == "grow-r1" and _memory_limit(new_job) == "2Gi"
    # Foreground deletion: the old Job existed until its pods were gone, so none of them outlived it.
    assert old_pod.metadata.name not in {p.metadata.name for p in jobs.pods(namespace, "grow-r1")}
    new_pod = jobs.running_pod(namespace, "grow-r1")
    status = jobs.wait_phase(namespace, "grow", "Training")
    assert status["run"] == 1 and status["artifacts"]["checkpoints"] == "s3://artifacts/grow/run-1/checkpoints/"
    config = jobs.cluster.core.read_namespaced_config_map("grow-r1-config", namespace).data["config.json"]
    assert json.loads(config)["output"]["runUri"] == "s3://artifacts/grow/run-1/"  # where the checkpoints are
    jobs.finish_pod(namespace, new_pod.metadata.name, 0, success_message())
    assert jobs.wait_phase(namespace, "grow", "Succeeded")["run"] == 1


def test_placement_change_retries_a_failed_run(
    operator_factory: Callable[..., Operator], jobs: Jobs, namespace: str
) -> None:
    """The out-of-memory story: run 1 fails, the user raises memory, run 1 is retried (and can resume)."""
    operator_factory(namespace, args=["--backoff-limit", "0"])
    killed = json.dumps({"code": "OutOfMemory", "message": "the trainer was killed (exit 137): out of memory"})
    jobs.create(namespace, ftj_manifest("oom", podMetadata=_pod_template_annotations(exit_code=137, message=killed)))
    failed = jobs.wait_phase(namespace, "oom", "Failed")
    assert failed["run"] == 1
    jobs.patch_spec(
        namespace,
        "oom",
        {
            "resources": {"memory": "2Gi"},
            "podMetadata": _pod_template_annotations(exit_code=0, message=success_message(1.3)),
        },
    )
    status = jobs.wait_phase(namespace, "oom", "Succeeded")
    assert status["run"] == 1 and status["metrics"]["test"]["loss"] == 1.3 and status.get("error") is None
    [job] = jobs.training_jobs(namespace, "oom")
    assert job.metadata.name == "oom-r1" and _memory_limit(job) == "2Gi"


def test_retry_annotation_retries_a_failed_run_without_a_spec_change(
    operator_factory: Callable[..., Operator], jobs: Jobs, namespace: str
) -> None:
    """After fixing what broke (the data in place, a node pool), `kubectl annotate ftj x finetune.dev/retry=1`."""
    operator_factory(namespace, args=["--backoff-limit", "0"])
    jobs.create(namespace, ftj_manifest("again"))
    first = jobs.running_pod(namespace, "again-r1")
    crash = json.dumps({"code": "InternalError", "message": "NCCL error: unhandled system error"})
    jobs.finish_pod(namespace, first.metadata.name, 1, crash)
    failed = jobs.wait_phase(namespace, "again", "Failed")
    assert failed["run"] == 1 and failed.get("retryToken") is None
    (failed_job,) = jobs.training_jobs(namespace, "again")
    jobs.cluster.custom.patch_namespaced_custom_object(
        "finetune.dev", "v1alpha1", namespace, "finetunejobs", "again",
        {"metadata": {"annotations": {"finetune.dev/retry": "1"}}},
    )  # fmt: skip
    second = wait_for(
        "a new pod of run 1",
        lambda: next(
            (
                p
                for p in jobs.pods(namespace, "again-r1")
                if p.status.phase == "Running" and p.metadata.name != first.metadata.name
            ),
            None,
        ),
    )
    (retried_job,) = jobs.training_jobs(namespace, "again")
    assert retried_job.metadata.uid != failed_job.metadata.uid and retried_job.metadata.name == "again-r1"
    status = jobs.wait_phase(namespace, "again", "Training")
    assert status["run"] == 1 and status["retryToken"] == "1" and status.get("error") is None
    jobs.finish_pod(namespace, second.metadata.name, 0, success_message())
    assert jobs.wait_phase(namespace, "again", "Succeeded")["run"] == 1


def test_serving_only_change_does_not_retrain(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(namespace, ftj_manifest("stay"))
    jobs.wait_phase(namespace, "stay", "Training")
    uid = jobs.training_jobs(namespace, "stay")[0].metadata.uid
    jobs.patch_spec(namespace, "stay", {"serving": {"replicas": 2}, "evaluation": {"gate": []}})
    wait_for("the new generation observed", lambda: jobs.status(namespace, "stay").get("observedGeneration") == 2)
    assert [j.metadata.uid for j in jobs.training_jobs(namespace, "stay")] == [uid]
    assert jobs.status(namespace, "stay")["run"] == 1


def test_suspend_and_resume(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(namespace, ftj_manifest("pause"))
    jobs.running_pod(namespace, "pause-r1")
    jobs.patch_spec(namespace, "pause", {"suspend": True})
    jobs.wait_phase(namespace, "pause", "Suspended")
    assert jobs.training_jobs(namespace, "pause")[0].spec.suspend is True
    wait_for(
        "no live pods",
        lambda: not [p for p in jobs.pods(namespace, "pause-r1") if p.status.phase == "Running"],
    )
    jobs.patch_spec(namespace, "pause", {"suspend": False})
    pod = jobs.running_pod(namespace, "pause-r1")
    jobs.wait_phase(namespace, "pause", "Training")
    assert jobs.status(namespace, "pause")["run"] == 1
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message())
    jobs.wait_phase(namespace, "pause", "Succeeded")


def test_kueue_suspend_never_touches_the_jobs_suspend_field(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(namespace, ftj_manifest("queued", queueName="team-q"))
    jobs.wait_phase(namespace, "queued", "Queued")
    job = jobs.training_jobs(namespace, "queued")[0]
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-q" and job.spec.suspend is True
    # Kueue admits it: it unsuspends the Job itself.
    jobs.cluster.batch.patch_namespaced_job(job.metadata.name, namespace, {"spec": {"suspend": False}})
    jobs.wait_phase(namespace, "queued", "Training")
    jobs.patch_spec(namespace, "queued", {"suspend": True})
    jobs.wait_phase(namespace, "queued", "Suspended")
    wait_for("the Job deleted", lambda: not jobs.training_jobs(namespace, "queued"))
    jobs.patch_spec(namespace, "queued", {"suspend": False})
    recreated = wait_for("the Job re-created", lambda: jobs.training_jobs(namespace, "queued"))
    assert recreated[0].spec.suspend is True  # waits for Kueue again
    jobs.wait_phase(namespace, "queued", "Queued")


def _children(jobs: Jobs, namespace: str, selector: str) -> list[str]:
    """Every kind of object the operator creates (and the Job controller's pods), by label."""
    from kubernetes.client import PolicyV1Api

    c = jobs.cluster
    found = [
        *c.batch.list_namespaced_job(namespace, label_selector=selector).items,
        *c.core.list_namespaced_pod(namespace, label_selector=selector).items,
        *c.core.list_namespaced_config_map(namespace, label_selector=selector).items,
        *c.core.list_namespaced_service_account(namespace, label_selector=selector).items,
        *c.rbac.list_namespaced_role(namespace, label_selector=selector).items,
        *c.rbac.list_namespaced_role_binding(namespace, label_selector=selector).items,
        *c.core.list_namespaced_service(namespace, label_selector=selector).items,
        *c.apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        *PolicyV1Api(c.api_client).list_namespaced_pod_disruption_budget(namespace, label_selector=selector).items,
    ]
    return sorted(f"{type(o).__name__}/{o.metadata.name}" for o in found)


def test_delete_cascades(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(namespace, ftj_manifest("gone", serving={"enabled": True, "replicas": 2}))
    pod = jobs.running_pod(namespace, "gone-r1")
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message())
    jobs.wait_phase(namespace, "gone", "Serving", timeout=90)
    selector = f"finetune.dev/job-uid={jobs.get(namespace, 'gone')['metadata']['uid']}"
    kinds = {name.split("/")[0] for name in _children(jobs, namespace, selector)}
    assert kinds >= {
        "V1Job",
        "V1ConfigMap",
        "V1ServiceAccount",
        "V1Role",
        "V1RoleBinding",
        "V1Service",
        "V1Deployment",
        "V1PodDisruptionBudget",
    }, kinds
    jobs.cluster.custom.delete_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "finetunejobs", "gone")
    wait_for(
        "every child of the FineTuneJob to be garbage-collected",
        lambda: not _children(jobs, namespace, selector),
        timeout=90,
    )


def test_operator_killed_mid_run_restarts_without_duplicates(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(namespace, ftj_manifest("crash"))
    pod = jobs.running_pod(namespace, "crash-r1")
    jobs.wait_phase(namespace, "crash", "Training")
    operator.kill()
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message(1.1))
    wait_for("the pod to finish", lambda: jobs.pods(namespace, "crash-r1")[0].status.phase == "Succeeded")
    operator.start()
    status = jobs.wait_phase(namespace, "crash", "Succeeded")
    assert status["metrics"]["test"]["loss"] == 1.1
    assert [j.metadata.name for j in jobs.training_jobs(namespace, "crash")] == ["crash-r1"]
    assert len(jobs.pods(namespace, "crash-r1")) == 1


def test_same_name_in_two_namespaces(
    operator_factory: Callable[..., Operator], jobs: Jobs, namespace: str, other_namespace: str
) -> None:
    operator_factory(namespace, other_namespace)
    for ns, loss in ((namespace, 1.0), (other_namespace, 2.0)):
        jobs.create(
            ns,
            ftj_manifest("twin", podMetadata=_pod_template_annotations(exit_code=0, message=success_message(loss))),
        )
    first = jobs.wait_phase(namespace, "twin", "Succeeded")
    second = jobs.wait_phase(other_namespace, "twin", "Succeeded")
    assert (first["metrics"]["test"]["loss"], second["metrics"]["test"]["loss"]) == (1.0, 2.0)


def test_missing_secret_waits_then_heals(operator: Operator, jobs: Jobs, namespace: str) -> None:
    from kubernetes import client

    jobs.create(namespace, ftj_manifest("later", storage={"credentialsSecret": "arrives-later"}))
    status = jobs.wait_phase(namespace, "later", "Pending")
    wait_for(
        "reason SecretMissing",
        lambda: (jobs.status(namespace, "later").get("error") or {}).get("code") == "SecretMissing",
    )
    assert jobs.training_jobs(namespace, "later") == []
    assert status.get("phase") == "Pending"
    jobs.cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="arrives-later"),
            string_data={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
        ),
    )
    healed = jobs.wait_phase(namespace, "later", "Training", timeout=60)
    assert healed.get("error") is None


def test_operator_never_writes_spec_or_metadata(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(
        namespace,
        ftj_manifest("gitops", podMetadata=_pod_template_annotations(exit_code=0, message=success_message())),
    )
    jobs.wait_phase(namespace, "gitops", "Succeeded")
    body = jobs.get(namespace, "gitops")
    assert body["metadata"]["generation"] == 1
    assert not body["metadata"].get("finalizers")
    assert not [k for k in (body["metadata"].get("annotations") or {}) if "kopf" in k]
    managers = {(m["manager"], m.get("subresource", "")) for m in body["metadata"]["managedFields"]}
    assert all(sub == "status" for manager, sub in managers if manager == "finetune-operator")


def test_long_name_works_end_to_end(operator: Operator, jobs: Jobs, namespace: str) -> None:
    name = "a-very-long-finetunejob-name." + "x" * 200
    jobs.create(
        namespace,
        ftj_manifest(name, podMetadata=_pod_template_annotations(exit_code=0, message=success_message())),
    )
    status = jobs.wait_phase(namespace, name, "Succeeded")
    job = jobs.training_jobs(namespace, name)[0]
    assert len(job.metadata.name) <= 50 and status["run"] == 1


def test_distributed_run_is_an_indexed_job_with_stable_worker_names(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, ftj_manifest("ddp", distributed={"workers": 2}))

    def running() -> list[Any] | None:
        found = [p for p in jobs.pods(namespace, "ddp-r1") if p.status.phase == "Running"]
        return found if len(found) == 2 else None

    pods = wait_for("both workers running", running)
    job = jobs.training_jobs(namespace, "ddp")[0]
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == job.spec.parallelism == 2
    service = jobs.cluster.core.read_namespaced_service("ddp-r1-workers", namespace)
    assert service.spec.cluster_ip == "None"
    assert {p.spec.hostname for p in pods} == {"ddp-r1-0", "ddp-r1-1"}
    assert {p.spec.subdomain for p in pods} == {"ddp-r1-workers"}
    env = {e.name: e for e in pods[0].spec.containers[0].env}
    assert env["MASTER_ADDR"].value == f"ddp-r1-0.ddp-r1-workers.{namespace}.svc"
    assert "job-completion-index" in env["NODE_RANK"].value_from.field_ref.field_path
    rank0 = next(p for p in pods if p.spec.hostname == "ddp-r1-0")
    other = next(p for p in pods if p.spec.hostname == "ddp-r1-1")
    jobs.finish_pod(namespace, rank0.metadata.name, 0, success_message(1.3))
    wait_for("rank 0 done", lambda: any(p.status.phase == "Succeeded" for p in jobs.pods(namespace, "ddp-r1")))
    assert jobs.status(namespace, "ddp")["phase"] == "Training"  # one index done is not the run done
    jobs.finish_pod(namespace, other.metadata.name, 0, json.dumps({"code": "Succeeded", "message": "rank 1"}))
    status = jobs.wait_phase(namespace, "ddp", "Succeeded")
    assert status["metrics"]["test"]["loss"] == 1.3  # rank 0's report
