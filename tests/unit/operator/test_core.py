"""The impure shell's pure helpers: merge patches, conditions, the store, the work queue, the settings."""

from __future__ import annotations

import asyncio

import pytest
from finetune_operator.api import conditions as cond
from finetune_operator.core.observed import JobObs
from finetune_operator.core.settings import parse_args
from finetune_operator.core.store import Store
from finetune_operator.core.workqueue import RequeueError, WorkQueue
from finetune_operator.finetunejob.controller import merge_patch


def test_merge_patch_sets_changes_and_removes_stale_keys_but_keeps_progress() -> None:
    old = {
        "phase": "Training",
        "progress": {"step": 3},
        "error": {"code": "X"},
        "gate": {"passed": True, "a": 1},
    }
    new = {"phase": "Failed", "error": None, "gate": {"passed": False, "a": 1}}
    assert merge_patch(old, new, keep=("progress",)) == {
        "phase": "Failed",
        "error": None,
        "gate": {"passed": False},
    }
    assert merge_patch(new, new) == {}


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    first = cond.merge([], [cond.condition(cond.READY, False, "Publishing", "m", 1)], "t1")
    same = cond.merge(first, [cond.condition(cond.READY, False, "Publishing", "other message", 2)], "t2")
    flipped = cond.merge(same, [cond.condition(cond.READY, True, "Serving", "m", 2)], "t3")
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["t1", "t1", "t3"]


def test_store_files_children_by_owner_uid_and_ignores_stale_bodies() -> None:
    store = Store()
    body = {"metadata": {"namespace": "ns", "name": "a", "uid": "u1", "resourceVersion": "10"}, "spec": {}}
    key = store.put_body(body)
    store.put_body({**body, "metadata": {**body["metadata"], "resourceVersion": "9"}, "spec": {"old": True}})
    job = JobObs("a-r1", 1, owner_uid="u1", namespace="ns", uid="j1")
    store.put_job(job)
    store.put_job(JobObs("a-r1", 1, active=1, owner_uid="u1", namespace="ns", uid="j1"), only_if_absent=True)
    view = store.view(key)
    assert view is not None and view.body["spec"] == {} and view.jobs == (job,)
    assert store.key_of("u1") == ("ns", "a")
    store.forget_body("ns", "a", "u1")
    assert store.view(key) is None and store.key_of("u1") is None


def test_the_store_holds_no_managed_fields_nor_kubectls_copy_of_the_spec() -> None:
    """Most of a held FineTuneJob body at 10,000 jobs was server-side apply's bookkeeping: not held. The watched
    body itself is not changed (the event's dict belongs to kopf), and every other annotation stays."""
    from finetune_operator.finetunesweep.store import SweepStore

    applied = "kubectl.kubernetes.io/last-applied-configuration"
    meta = {"namespace": "ns", "name": "a", "uid": "u1", "resourceVersion": "10",
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {applied: '{"spec": {}}', "finetune.dev/retry": "t1"}}  # fmt: skip
    body = {"metadata": meta, "spec": {"x": [1]}, "status": {"phase": "Queued"}}
    store, sweeps = Store(), SweepStore()
    key = store.put_body(body)
    store.put_server(body)
    sweeps.put_sweep(body)
    view, server, sweep = store.view(key), store.server(key), sweeps.view(key)
    assert view is not None and server is not None and sweep is not None
    for held in (view.body, server, sweep[0]):
        assert "managedFields" not in held["metadata"]
        assert held["metadata"]["annotations"] == {"finetune.dev/retry": "t1"}
        assert held["spec"] == {"x": [1]} and held["status"] == {"phase": "Queued"}
    assert "managedFields" in meta and applied in meta["annotations"]  # the watched body is untouched
    view.body["spec"]["x"].append(2)  # a copy: a reconcile's edits do not reach what is held
    again = store.view(key)
    assert again is not None and again.body["spec"] == {"x": [1]}


def test_the_event_of_the_operators_own_status_write_queues_no_pass() -> None:
    """A pass files the body its status patch answered with; the watch event of that same version is no news."""
    from finetune_operator.finetunejob.registration import CONTROLLER

    store = Store()
    loop = type("Loop", (), {"store": store})()
    body_watch = CONTROLLER.watches[0]
    body = {"metadata": {"namespace": "ns", "name": "a", "uid": "u1", "resourceVersion": "10"}, "spec": {}}
    assert body_watch.observe(loop, "ADDED", body) == [("ns", "a")]  # new: a pass
    written = {**body, "metadata": {**body["metadata"], "resourceVersion": "11"}, "status": {"phase": "Queued"}}
    store.put_body(written)  # what Reconciler._write_status files from the patch's answer
    assert body_watch.observe(loop, "MODIFIED", written) == []  # its event: already held
    edited = {**written, "metadata": {**written["metadata"], "resourceVersion": "12"}, "spec": {"x": 1}}
    assert body_watch.observe(loop, "MODIFIED", edited) == [("ns", "a")]  # anyone else's change: a pass
    assert store.holds(edited) and not store.holds(
        {**edited, "metadata": {**edited["metadata"], "resourceVersion": ""}}
    )


def test_work_queue_coalesces_and_requeues() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        gate = asyncio.Event()

        async def handle(key: str) -> float | None:
            seen.append(key)
            if key == "slow" and seen.count("slow") == 1:
                await gate.wait()
            if key == "flaky" and seen.count("flaky") == 1:
                raise RequeueError("conflict", 0.01)
            return 0.01 if key == "timer" and seen.count("timer") < 2 else None

        queue: WorkQueue[str] = WorkQueue(handle, concurrency=2)
        queue.start()
        for key in ("slow", "slow", "slow"):  # queued once
            queue.add(key)
        for _ in range(1000):  # until a worker has taken it: it is running now, not a guess that it is
            if "slow" in seen:
                break
            await asyncio.sleep(0.001)
        queue.add("slow")  # running: marked dirty, runs once more
        queue.add("slow")
        queue.add("flaky")
        queue.add("timer")
        await asyncio.sleep(0.05)
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if queue.idle() and seen.count("timer") == 2:
                break
        await queue.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen.count("slow") == 2 and seen.count("flaky") == 2 and seen.count("timer") == 2


@pytest.mark.parametrize(
    ("argv", "env", "namespaces"),
    [
        ([], {}, ()),
        (["-n", "a", "--namespace", "b,c"], {}, ("a", "b", "c")),
        ([], {"FTO_NAMESPACES": "x, y"}, ("x", "y")),
        (["-A"], {"FTO_NAMESPACES": "x"}, ()),
    ],
)
def test_namespaces_from_flags_or_environment(
    argv: list[str], env: dict[str, str], namespaces: tuple[str, ...]
) -> None:
    assert parse_args(argv, env).namespaces == namespaces


def test_images_from_environment_and_flags() -> None:
    settings = parse_args(["--vllm-image", "v:1"], {"FTO_TRAINER_IMAGE": "t:1", "FTO_BACKOFF_LIMIT": "5"})
    assert (settings.trainer_image, settings.server_image, settings.vllm_image) == ("t:1", "t:1", "v:1")
    assert settings.backoff_limit == 5


def test_child_changes_jump_the_queue_of_new_jobs() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []

        async def handle(key: str) -> None:
            seen.append(key)

        queue: WorkQueue[str] = WorkQueue(handle, concurrency=1)
        for key in ("new-1", "new-2", "new-3"):
            queue.add(key)
        queue.add("pod-finished", urgent=True)
        queue.add("new-3", urgent=True)  # promoted, and still run once
        queue.start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if queue.idle():
                break
        await queue.stop()
        return seen

    assert asyncio.run(scenario()) == ["pod-finished", "new-3", "new-1", "new-2"]


def test_gpu_table_rows_from_flags_or_environment_reach_the_validation_pod() -> None:
    from finetune_operator.builders.training import validate_command

    from .support import example

    from_env = parse_args([], env={"FTO_GPU_MEMORY": "H100-80G=76Gi,NVIDIA-A100-SXM4-40GB-MIG-3g.20gb=19Gi"})
    assert from_env.gpu_memory == ("H100-80G=76Gi", "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb=19Gi")
    assert parse_args(["--gpu-memory", "L4=20Gi"], env={"FTO_GPU_MEMORY": "H100-80G=76Gi"}).gpu_memory == ("L4=20Gi",)
    assert parse_args([], env={}).gpu_memory == ()
    with pytest.raises(SystemExit):
        parse_args([], env={"FTO_GPU_MEMORY": "H100-80G:lots"})
    from finetune_operator.api.finetunejob import parse_spec

    command = validate_command(parse_spec(example("distributed")["spec"]), from_env.gpu_memory)
    assert command[-4:] == ["--gpu-memory", "H100-80G=76Gi", "--gpu-memory", "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb=19Gi"]
