"""Out of memory on a real API server and Job controller: a trainer container the kernel killed (kwok plays the
kubelet: exit 137, reason OOMKilled) fails the run at once as `OutOfMemory`, with the memory plan and the changes
that would fit; the Job runs one pod, not one per retry of its backoff limit. Disk: a pod evicted for its own
ephemeral-storage limit fails the run at once; evictions because the node ran low are counted and bounded."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.integration.conftest import Jobs, ftj_manifest, kwok_annotations, success_message
from tests.support.ports import free_port
from tests.support.waiting import wait_for

GIB = 1024**3
MEMORY_PLAN = {
    "accelerator": "NVIDIA L4 (24 GiB)",
    "budgetBytes": 22 * GIB,
    "estimateBytes": 21 * GIB,
    "fits": True,
    "peakAt": "backward",
    "microBatch": 16,
    "gradientAccumulationSteps": 1,
    "gradientCheckpointing": False,
    "precision": "bf16",
    "worldSize": 1,
    "suggestions": [],
}


def _one_failed_pod_and_no_more(jobs: Jobs, namespace: str, job_name: str) -> None:
    """The Job failed at its first pod and started no second one (the backoff limit is 2)."""
    job = wait_for(
        "the Job failed by its podFailurePolicy",
        lambda: next(
            (
                j
                for j in jobs.training_jobs(namespace, job_name.rsplit("-", 1)[0])
                if j.metadata.name == job_name
                and any(c.type == "Failed" and c.status == "True" for c in j.status.conditions or [])
            ),
            None,
        ),
        timeout=30,
    )
    assert job.status.failed == 1 and not job.status.active
    assert [c.reason for c in job.status.conditions if c.type == "Failed"] == ["PodFailurePolicy"]
    time.sleep(3)  # a retry would have started by now (the Job controller's first backoff is 10 s at most)
    assert len(jobs.pods(namespace, job_name)) == 1


def test_an_oom_killed_trainer_is_out_of_memory_and_is_not_retried(operator: Any, jobs: Jobs, namespace: str) -> None:
    annotations = kwok_annotations(137, delay="300ms", reason="OOMKilled")
    jobs.create(namespace, ftj_manifest("oom", podMetadata={"annotations": annotations}))
    status = jobs.wait_phase(namespace, "oom", "Failed", timeout=60)
    error = status["error"]
    assert error["code"] == "OutOfMemory", error
    assert "OOMKilled, exit 137" in error["message"] and "raise spec.resources.memory (now 1Gi" in error["message"]
    assert "no memory plan was recorded" in error["message"]  # the control loop runs without the data check here
    trained = next(c for c in status["conditions"] if c["type"] == "Trained")
    assert trained["reason"] == "OutOfMemory"
    _one_failed_pod_and_no_more(jobs, namespace, "oom-r1")


def test_the_message_carries_the_plan_the_data_check_recorded(
    operator_factory: Any, jobs: Jobs, namespace: str
) -> None:
    operator_factory(namespace, args=["--validation", "--backoff-limit", "2"])
    jobs.create(namespace, ftj_manifest("planned"))
    check = jobs.check_pod(namespace, "planned")
    summary = {"schema": "chat", "records": {"train": 80}, "memoryPlan": MEMORY_PLAN}
    validated = json.dumps({"code": "Succeeded", "message": "validated", "summary": summary})
    jobs.finish_pod(namespace, check.metadata.name, 0, validated)
    trainer = jobs.running_pod(namespace, "planned-r1")
    jobs.finish_pod(namespace, trainer.metadata.name, 137, reason="OOMKilled")
    error = jobs.wait_phase(namespace, "planned", "Failed", timeout=60)["error"]
    assert error["code"] == "OutOfMemory", error
    assert "estimate 21.0 GiB against a budget of 22.0 GiB on NVIDIA L4 (24 GiB)" in error["message"]
    assert "micro-batch 16" in error["message"] and "batchSize: auto (now 8" in error["message"]
    _one_failed_pod_and_no_more(jobs, namespace, "planned-r1")


def test_a_cuda_out_of_memory_is_the_same_reason(operator: Any, jobs: Jobs, namespace: str) -> None:
    """The trainer's own report of a torch.cuda.OutOfMemoryError: code OutOfMemory, exit 42."""
    oom = json.dumps({"code": "OutOfMemory", "message": "the GPU ran out of memory during the run: CUDA out of memory"})
    annotations = kwok_annotations(42, oom, delay="300ms")
    jobs.create(namespace, ftj_manifest("cuda-oom", podMetadata={"annotations": annotations}))
    error = jobs.wait_phase(namespace, "cuda-oom", "Failed", timeout=60)["error"]
    assert error["code"] == "OutOfMemory" and "the GPU ran out of memory" in error["message"]
    assert "hyperparameters.gradientCheckpointing: true" in error["message"]
    _one_failed_pod_and_no_more(jobs, namespace, "cuda-oom-r1")


def test_raising_memory_after_an_oom_kill_runs_it_again(operator: Any, jobs: Jobs, namespace: str) -> None:
    """Not retried identically, but retried once the spec changes what ran out."""
    annotations = kwok_annotations(137, delay="300ms", reason="OOMKilled")
    jobs.create(namespace, ftj_manifest("grow", podMetadata={"annotations": annotations}))
    assert jobs.wait_phase(namespace, "grow", "Failed", timeout=60)["error"]["code"] == "OutOfMemory"
    done = {"annotations": kwok_annotations(0, success_message(), delay="300ms")}
    jobs.patch_spec(namespace, "grow", {"resources": {"memory": "4Gi"}, "podMetadata": done})
    status = jobs.wait_phase(namespace, "grow", "Succeeded", timeout=60)
    assert status["run"] == 1 and status.get("error") is None


def test_a_trainer_evicted_for_its_own_disk_limit_fails_the_run_and_starts_no_replacement(
    operator: Any, jobs: Jobs, namespace: str
) -> None:
    """The kubelet's eviction for a pod's own ephemeral-storage limit (written here as the kubelet writes it: phase
    Failed, reason Evicted, DisruptionTarget) is ignored by the Job's podFailurePolicy, so without the operator the
    Job would replace the pod forever; the run fails DiskLimitExceeded and its Job is deleted."""
    manifest = ftj_manifest("disk")
    manifest["spec"]["resources"]["ephemeralStorage"] = "2Gi"
    jobs.create(namespace, manifest)
    (job,) = wait_for("the training Job", lambda: jobs.training_jobs(namespace, "disk"))
    pod = jobs.running_pod(namespace, job.metadata.name)
    (container,) = pod.spec.containers
    assert container.resources.limits["ephemeral-storage"] == "2Gi"
    _evict(
        jobs,
        namespace,
        pod.metadata.name,
        "Pod ephemeral local storage usage exceeds the total limit of containers 2Gi. ",
    )
    status = jobs.wait_phase(namespace, "disk", "Failed", timeout=60)
    assert status["error"]["code"] == "DiskLimitExceeded", status["error"]
    assert "ephemeral-storage 2Gi" in status["error"]["message"] and pod.metadata.name in status["error"]["message"]
    wait_for("the Job deleted", lambda: not jobs.training_jobs(namespace, "disk"), timeout=30)
    time.sleep(3)  # no new Job for the same spec
    assert not jobs.training_jobs(namespace, "disk") and jobs.status(namespace, "disk")["phase"] == "Failed"


NODE_PRESSURE = "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 9Gi. "


def _evict(jobs: Jobs, namespace: str, pod: str, message: str) -> None:
    """Write the kubelet's eviction on a kwok pod, as the kubelet writes it: phase Failed, reason Evicted,
    DisruptionTarget (TerminationByKubelet), which the Job's podFailurePolicy ignores."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    condition = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "TerminationByKubelet",
        "message": message,
        "lastTransitionTime": now,
    }
    jobs.cluster.core.patch_namespaced_pod_status(
        pod,
        namespace,
        {"status": {"phase": "Failed", "reason": "Evicted", "message": message, "conditions": [condition]}},
    )


def test_node_pressure_evictions_are_counted_announced_and_stop_the_run_at_the_limit(
    operator_factory: Callable[..., Any], jobs: Jobs, namespace: str
) -> None:
    """Each eviction for the node's disk pressure is a free retry of the Job (it replaces the pod), so the
    operator counts them (status.evictions, an Event, a metric); at its limit (2 here) the run fails
    EvictedRepeatedly naming the node, and its Job is deleted so that no third pod starts."""
    port = free_port()
    operator_factory(namespace, args=["--node-pressure-evictions", "2", "--metrics-port", str(port)])
    jobs.create(namespace, ftj_manifest("pressed"))
    (job,) = wait_for("the training Job", lambda: jobs.training_jobs(namespace, "pressed"))
    first = jobs.running_pod(namespace, job.metadata.name)
    _evict(jobs, namespace, first.metadata.name, NODE_PRESSURE)
    record = wait_for("the eviction counted", lambda: jobs.status(namespace, "pressed").get("evictions"), timeout=30)
    assert record["count"] == 1 and record["nodes"] == [first.spec.node_name]
    assert record["last"]["pod"] == first.metadata.name and record["last"]["resource"] == "ephemeral-storage"
    assert jobs.status(namespace, "pressed")["phase"] != "Failed"

    def event() -> Any:
        found = jobs.cluster.core.list_namespaced_event(namespace, field_selector="involvedObject.name=pressed")
        return next((e for e in found.items if e.reason == "NodePressureEviction"), None)

    announced = wait_for("the NodePressureEviction Event", event, timeout=30)
    assert announced.type == "Warning" and first.metadata.name in announced.message and "1 of 2" in announced.message

    second = wait_for(
        "the Job's replacement pod",
        lambda: next(
            (
                p
                for p in jobs.pods(namespace, job.metadata.name)
                if p.metadata.name != first.metadata.name and p.status.phase == "Running"
            ),
            None,
        ),
        timeout=60,
    )
    _evict(jobs, namespace, second.metadata.name, NODE_PRESSURE)
    status = jobs.wait_phase(namespace, "pressed", "Failed", timeout=60)
    assert status["error"]["code"] == "EvictedRepeatedly", status["error"]
    assert "evicted 2 times" in status["error"]["message"] and second.spec.node_name in status["error"]["message"]
    assert status["evictions"]["count"] == 2
    wait_for("the Job deleted", lambda: not jobs.training_jobs(namespace, "pressed"), timeout=30)
    time.sleep(3)  # no new Job for the same spec
    assert not jobs.training_jobs(namespace, "pressed") and jobs.status(namespace, "pressed")["phase"] == "Failed"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'finetune_operator_node_pressure_evictions_total{resource="ephemeral-storage"} 2.0' in metrics
