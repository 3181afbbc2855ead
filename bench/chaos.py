"""Chaos benchmark: faults injected by this script on the local cluster, and what each one cost.

    python bench/chaos.py [--jobs 200] [--s3-outage 30]
        [--faults apiserver,etcd,leader,frozen,crd,s3,corrupt,notready,evict,serving] [--own-ports KEY=PORT,...]

Faults that restart the control plane or cut the S3 server run on a cluster of this script's own (a second
`hack/cluster.sh` instance: its own state folder and ports, no real node), brought up first and taken down at
the end, so a cluster others are testing on is never restarted. Each fault is compared with the same work
without the fault, run just before it (the ratio is fault / no fault):

- apiserver, etcd: kube-apiserver (or etcd) stopped and started again once a quarter of a burst of `--jobs`
  kwok-played FineTuneJobs have their training Job. Figures: seconds down, seconds from "back" until every
  status converged, duplicate and orphaned Jobs, whether the operator survived.
- leader: two operators with leader election; the leader SIGKILLed at a quarter of the burst. Figures: seconds
  until the standby holds the Lease, until it creates its first Job, until everything converged; duplicates.
- frozen: two operators with leader election; the leader SIGSTOPped at a quarter of the burst, woken (SIGCONT)
  once the standby leads and has acted. Figures: seconds until the standby holds the Lease and acts, the writes
  the woken process sent after waking (from the API server's audit log, by its User-Agent; target 0: its fence
  refuses them), whether it logged the refusal and how soon it exited, duplicates.
- crd: the FineTuneJob CRD replaced by one with a new optional spec field with a default (one this operator does
  not know: the chart's documented order applies CRDs before the operator) once every FineTuneJob of the burst
  was accepted, at least a quarter with their Job; each stored job touched so the operator reads it with the
  default at once. Figures: jobs stored, Succeeded at the change, jobs failed ConfigInvalid (target 0; before
  the fix, every stored one), duplicates; the CRD is put back after (tests/support/crd_change.py).
- s3: the real trainer (tiny Llama, in this process) against the real S3 server behind a fault proxy that cuts
  every connection for `--s3-outage` seconds from the start of a checkpoint upload. Figures: retries, seconds
  waited, the run's wall time vs the same run without the outage. Then an outage longer than the patience:
  the run must fail `StorageUnavailable` (retryable) and the next attempt resume from the newest checkpoint
  with its marker, never from the one the outage cut short (steps lost vs the checkpoint interval).
- corrupt: the real trainer (as for s3) against the real S3 server; objects corrupted in storage, their recorded
  sha256 kept (as a fault below the S3 API leaves them): the weights of a run's newest checkpoint truncated, then
  the run continued (more steps): it must resume from the checkpoint before it; a data file truncated: the run
  must stop with `ObjectCorrupt` (exit 42, no retry) naming the key after reading it twice. Figures: the step
  resumed from, steps lost vs the interval, the copies read again and refused, seconds to the refusal.
- notready: a kwok GPU node stops heartbeating under a running training pod (kwok no longer manages it, as
  when a node's kubelet dies). Figures: seconds until the node is NotReady, until the pod is replaced on the
  other node, what the FineTuneJob says meanwhile.
- evict: on the default cluster's real node (the only one that runs containers; only this script's namespace and
  bucket are touched), a real trainer pod (the trainer image of `hack/build-images.sh`, imported if missing)
  evicted through the Eviction API past its second checkpoint, then the kubelet restarted under its replacement.
  Figures: the step it stopped at and the step resumed from (steps lost vs the interval), seconds to resume,
  whether the kubelet restart cost anything.
- serving: on the same real node, a published model served by two replicas of our engine (PodDisruptionBudget,
  preStop drain) while 8 clients send requests without pause to the Service's ready pods
  (tests/support/endpoint_load.py): a spec change rolls the pods to a retrained run, then one pod is deleted.
  Figures: requests sent and failed in each phase, seconds, p50/p99 latency (target: 0 failed).

Every fault prints what was lost; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "trainer-image"))

from tests.support import audit, burst, crd_change  # noqa: E402
from tests.support.chaos import Components, FaultProxy  # noqa: E402
from tests.support.crds import install_crd, install_operator_crds  # noqa: E402

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
OWN_PORTS = {
    "FTO_API_PORT": "27443",
    "FTO_ETCD_PORT": "27379",
    "FTO_KCM_PORT": "27257",
    "FTO_SCHEDULER_PORT": "27259",
    "FTO_KWOK_PORT": "27247",
    "FTO_S3_PORT": "29333",
    "FTO_REAL_NODE": "0",
}


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


class OwnCluster:
    """A second local cluster for the faults that restart its parts (hack/README.md: a second cluster)."""

    def __init__(self, state: Path, keep: bool) -> None:
        self.state, self.keep = state, keep
        self.env = {**os.environ, **OWN_PORTS, "FTO_STATE_DIR": str(state)}

    def __enter__(self) -> OwnCluster:
        say(f"bringing up a cluster of this benchmark's own in {self.state}")
        subprocess.run([str(ROOT / "hack" / "cluster.sh"), "up"], env=self.env, check=True, capture_output=True)
        # the helpers (tests.support) and the operator subprocesses read the cluster from these
        os.environ.update({"FTO_STATE_DIR": str(self.state), "KUBECONFIG": str(self.kubeconfig)})
        for line in (self.state / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            if key and not key.startswith("#"):
                os.environ[key] = value
        return self

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            say(f"cluster kept: FTO_STATE_DIR={self.state} hack/cluster.sh down")
            return
        subprocess.run(
            [str(ROOT / "hack" / "cluster.sh"), "down"], env={**os.environ, "FTO_STATE_DIR": str(self.state)}
        )

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def clients(self) -> tuple[Any, Any, Any, Any]:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        api.configuration.connection_pool_maxsize = 16
        return api, client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)


class Operator:
    """`python -m finetune_operator` on one namespace, as the tests run it; kill() is a SIGKILL."""

    def __init__(self, namespace: str, log: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}", "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "finetune_operator", "-n", namespace, "--health-port", "0", "--no-validation",
             "--trainer-image", "registry.local/finetune-trainer:chaos", *args],
            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def leading(self) -> bool:
        return "leads (Lease" in self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def capacity(core: Any, jobs: int) -> Iterator[None]:
    """Enough kwok GPU nodes (8 GPUs each, label type=kwok as the cluster's own) that a burst's pods all run at
    once: the figures are the operator's and the control plane's, not a queue for 16 fake GPUs."""
    names = [f"chaos-capacity-{i}" for i in range((jobs + 7) // 8)]
    cap = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "2Ti", "pods": "110", "nvidia.com/gpu": "8"}
    for name in names:
        with contextlib.suppress(Exception):
            core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {"type": "kwok", "kubernetes.io/hostname": name},
                    },
                    "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
                    "status": {"allocatable": cap, "capacity": cap},
                }
            )
    try:
        yield
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                core.delete_node(name)


@contextlib.contextmanager
def namespace_of(core: Any, prefix: str) -> Iterator[str]:
    from kubernetes import client

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            core.delete_namespace(name, propagation_policy="Background")


def wait(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if found := probe():
                return found
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def burst_round(
    cluster: OwnCluster, jobs: int, delay: str, fault: str | None, logs: Path, timeout: float
) -> dict[str, Any]:
    """One burst of `jobs` FineTuneJobs with `fault` (None: the no-fault reference) at a quarter of it."""
    _, core, batch, custom = cluster.clients()
    with namespace_of(core, f"chaos-{fault or 'none'}") as namespace:
        elected = fault in ("leader", "frozen")
        changed_crd = False
        args = ["--leader-election", "--leader-election-namespace", namespace] if elected else []
        operators = [
            Operator(namespace, logs / f"operator-{namespace}-{i}.log", *args) for i in range(2 if args else 1)
        ]
        try:
            active = wait("a leader", lambda: next((o for o in operators if o.leading()), None), 60) if args else None
            time.sleep(2)  # the operator's imports and first list
            started = time.monotonic()
            burst.create(custom, namespace, jobs, delay)
            created = time.monotonic() - started
            figures: dict[str, Any] = {"jobs": jobs, "create_seconds": round(created, 1)}
            if fault:
                wait("a quarter of the Jobs", lambda: burst.count_jobs(batch, namespace) >= jobs // 4, timeout)
                figures["jobs_at_fault"] = burst.count_jobs(batch, namespace)
                at = time.monotonic()
                if fault in ("apiserver", "etcd"):
                    component = "kube-apiserver" if fault == "apiserver" else "etcd"
                    figures["down_and_back_seconds"] = round(Components(cluster.state).restart(component), 1)
                    back = time.monotonic()
                elif fault == "frozen":
                    assert active is not None
                    back = frozen_leader(cluster, namespace, operators, active, figures)
                elif fault == "crd":
                    api = cluster.clients()[0]
                    names = wait(
                        "every job accepted", lambda: crd_change.all_accepted(custom, namespace, jobs), timeout
                    )
                    figures["stored_at_change"] = len(names)
                    figures["succeeded_at_change"] = burst.census(custom, batch, namespace).succeeded
                    changed_crd = True
                    crd_change.change_crd(api, custom, namespace, names)
                    back = time.monotonic()
                else:
                    assert active is not None
                    standby = next(o for o in operators if o is not active)
                    count = burst.count_jobs(batch, namespace)
                    done = burst.census(custom, batch, namespace).succeeded
                    active.kill()
                    wait("the standby to lead", standby.leading, 120)
                    back = time.monotonic()
                    figures["takeover_seconds"] = round(back - at, 1)
                    # its first write: a Job, or a status when every Job existed already
                    wait(
                        "the standby's first action",
                        lambda: (
                            burst.count_jobs(batch, namespace) > count
                            or burst.census(custom, batch, namespace).succeeded > done
                        ),
                        120,
                        0.1,
                    )
                    figures["first_action_after_kill_seconds"] = round(time.monotonic() - at, 1)
            if changed_crd:  # failures are this fault's cost: wait until every job ended, either way
                statuses = crd_change.wait_finished(custom, namespace, jobs, timeout)
                figures["config_invalid"] = len(crd_change.config_invalid(statuses))
                # the jobs the operator read with the new field's default (one warning each): the fault reached them
                text = operators[0].log.read_text(errors="replace")
                figures["read_with_the_default"] = text.count(f"spec.{crd_change.FIELD} not known to this operator")
                final = burst.census(custom, batch, namespace)
            else:
                final = burst.wait_converged(custom, batch, namespace, jobs, timeout)
            end = time.monotonic()
            if fault:
                figures["converged_after_back_seconds"] = round(end - back, 1)
            figures.update(
                total_seconds=round(end - started, 1),
                succeeded=final.succeeded,
                duplicate_jobs=sum(len(n) - 1 for n in final.duplicates.values()),
                orphaned_jobs=len(final.orphans),
                operators_alive=sum(1 for o in operators if o.alive),
                load_average_1m=round(os.getloadavg()[0], 1),
            )
            return figures
        finally:
            for operator in operators:
                operator.stop()
            if changed_crd:
                crd_change.restore_crd(cluster.clients()[0])


def lease_holder(cluster: OwnCluster, namespace: str) -> str:
    from kubernetes import client

    api = cluster.clients()[0]
    try:
        lease: Any = client.CoordinationV1Api(api).read_namespaced_lease("finetune-operator", namespace)
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def frozen_leader(
    cluster: OwnCluster, namespace: str, operators: list[Operator], active: Operator, figures: dict[str, Any]
) -> float:
    """SIGSTOP the leader, wait until the standby leads and has written something, SIGCONT the old one; record
    what the woken process wrote afterwards (the audit log, by its User-Agent) and how it stepped down. Returns
    when the standby took over (monotonic)."""
    old = lease_holder(cluster, namespace)
    at = time.monotonic()
    active.process.send_signal(signal.SIGSTOP)
    try:
        new = wait("the standby to lead", lambda: (h := lease_holder(cluster, namespace)) not in ("", old) and h, 120)
        back = time.monotonic()
        figures["takeover_seconds"] = round(back - at, 1)
        wait(
            "the standby's first action",
            lambda: [w for w in audit.writes(f"finetune-operator/{new}", namespace) if w.resource != "leases"],
            120,
            0.1,
        )
        figures["first_action_after_freeze_seconds"] = round(time.monotonic() - at, 1)
    finally:
        woke, woke_at = audit.now(), time.monotonic()
        active.process.send_signal(signal.SIGCONT)
    figures["frozen_seconds"] = round(woke_at - at, 1)
    try:
        wait("the woken leader to exit", lambda: active.process.poll() is not None, 60, 0.05)
        figures["woken_exit_seconds"] = round(time.monotonic() - woke_at, 2)
    except TimeoutError:
        figures["woken_exit_seconds"] = None  # it went on running: a failure the figures show
    figures["woken_exit_code"] = active.process.returncode
    after = [w for w in audit.writes(f"finetune-operator/{old}", namespace) if w.at >= woke]
    figures["woken_writes"] = len(after)
    text = active.log.read_text(errors="replace")
    figures["woken_refused_a_write"] = "refused to " in text and "leadership is stale" in text
    for write in after:
        say(f"frozen: the woken leader wrote {write}")
    return back


def burst_fault(cluster: OwnCluster, fault: str, jobs: int, logs: Path, timeout: float) -> dict[str, Any]:
    say(f"{fault}: reference burst of {jobs} without the fault")
    reference = burst_round(cluster, jobs, "20s", None, logs, timeout)
    say(f"{fault}: reference {reference}")
    say(f"{fault}: burst of {jobs} with the fault")
    faulty = burst_round(cluster, jobs, "20s", fault, logs, timeout)
    lost = (
        faulty["duplicate_jobs"]
        + faulty["orphaned_jobs"]
        + (jobs - faulty["succeeded"])
        + faulty.get("woken_writes", 0)
        + faulty.get("config_invalid", 0)
    )
    say(
        f"{fault}: {faulty} - lost: {jobs - faulty['succeeded']} statuses not converged, "
        f"{faulty['duplicate_jobs']} duplicate and {faulty['orphaned_jobs']} orphaned Jobs, "
        f"{faulty.get('config_invalid', 0)} failed ConfigInvalid"
    )
    return {
        "reference": reference,
        "fault": faulty,
        "lost": lost,
        "total_ratio": round(faulty["total_seconds"] / reference["total_seconds"], 2),
    }


class TrainerRuns:
    """The real trainer in this process (as tests/trainer run it) on a tiny Llama, its S3 traffic through a proxy."""

    def __init__(self, work: Path, proxy: FaultProxy) -> None:
        import boto3

        self.work, self.proxy = work, proxy
        self.client = boto3.client(
            "s3",
            endpoint_url=os.environ["FTO_S3_ENDPOINT"],
            aws_access_key_id=os.environ["FTO_S3_ACCESS_KEY"],
            aws_secret_access_key=os.environ["FTO_S3_SECRET_KEY"],
            region_name="us-east-1",
        )
        os.environ.update(
            HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
            AWS_ENDPOINT_URL=proxy.url, AWS_ACCESS_KEY_ID=os.environ["FTO_S3_ACCESS_KEY"],
            AWS_SECRET_ACCESS_KEY=os.environ["FTO_S3_SECRET_KEY"], AWS_DEFAULT_REGION="us-east-1",
            HF_DATASETS_CACHE=str(work / "hf-datasets"),
        )  # fmt: skip
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        from tests.trainer.builders import build_tiny_llama

        self.model = build_tiny_llama(work / "tiny-llama")
        self.steps: list[int] = []
        from finetune_trainer.training.callbacks import TrainerHooks

        on_step_end = TrainerHooks.on_step_end

        def record(hooks: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps.append(state.global_step)
            on_step_end(hooks, args, state, control, **kwargs)

        TrainerHooks.on_step_end = record  # type: ignore[method-assign,assignment]

    def config(self, steps: int, interval: int) -> dict[str, Any]:
        """A fresh bucket with the model and data; the config of one run in it."""
        from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config, upload_folder

        bucket = "chaos-" + uuid.uuid4().hex[:12]
        self.client.create_bucket(Bucket=bucket)
        model_uri = upload_folder(self.client, bucket, self.model, "models/tiny-llama")
        train = put_jsonl(self.client, bucket, "data/train.jsonl", arithmetic_records(400))
        raw = trainer_config(bucket, model_uri, train)
        raw["hyperparameters"]["maxSteps"] = steps
        raw["checkpointing"] = {"intervalSteps": interval, "keep": 3}
        return raw

    def run(self, raw: dict[str, Any]) -> tuple[int, dict[str, Any], float, list[int]]:
        """One attempt: exit code, termination message, wall seconds, the steps it trained."""
        from finetune_trainer.cli import run_train

        attempt = self.work / uuid.uuid4().hex[:6]
        attempt.mkdir()
        os.environ.update(FTO_WORK_DIR=str(attempt / "work"), FTO_TERMINATION_LOG=str(attempt / "termination"))
        (attempt / "config.json").write_text(json.dumps(raw))
        first = len(self.steps)
        previous = signal.getsignal(signal.SIGTERM)
        started = time.monotonic()
        try:
            code = run_train(attempt / "config.json")
        finally:
            signal.signal(signal.SIGTERM, previous)
        seconds = time.monotonic() - started
        return code, json.loads((attempt / "termination").read_text()), seconds, self.steps[first:]

    def complete_checkpoints(self, raw: dict[str, Any]) -> dict[int, bool]:
        bucket = raw["output"]["uri"].split("/")[2]
        found: dict[int, bool] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="out/run-1/checkpoints/"
        ):
            for item in page.get("Contents", []):
                step = int(item["Key"].split("/")[3].split("-")[1])
                found[step] = found.get(step, False) or item["Key"].endswith("/_COMPLETE")
        return found


def s3_fault(outage: float, steps: int = 40, interval: int = 10) -> dict[str, Any]:
    """The S3 server cut off for `outage` seconds from a checkpoint upload; then beyond the trainer's patience."""
    from finetune_trainer.core import storage as storage_module
    from finetune_trainer.training.checkpoints import CheckpointStore

    work = Path(tempfile.mkdtemp(prefix="chaos-s3-"))
    upstream = os.environ["FTO_S3_ENDPOINT"]
    with FaultProxy.to_url(upstream) as proxy:
        runs = TrainerRuns(work, proxy)
        say(f"s3: reference run ({steps} steps, a checkpoint every {interval}) without an outage")
        code, _, reference_seconds, _ = runs.run(runs.config(steps, interval))
        assert code == 0, "the reference run failed"

        upload = CheckpointStore.upload
        cut: list[float] = []

        def cut_at_second_checkpoint(store: Any, local: Path, step: int, resolved: str) -> None:
            if step == 2 * interval and not cut:
                proxy.down()
                cut.append(time.monotonic())
                threading.Timer(outage, proxy.up).start()
            upload(store, local, step, resolved)

        CheckpointStore.upload = cut_at_second_checkpoint  # type: ignore[method-assign,assignment]
        before = storage_module.OUTAGES.retries, storage_module.OUTAGES.waited_seconds
        say(f"s3: the same run, every connection cut for {outage:.0f}s from checkpoint {2 * interval}'s upload")
        raw = runs.config(steps, interval)
        code, message, outage_seconds, trained = runs.run(raw)
        CheckpointStore.upload = upload  # type: ignore[method-assign,assignment]
        ridden = {
            "outage_seconds": outage,
            "exit_code": code,
            "code": message.get("code"),
            "retries": storage_module.OUTAGES.retries - before[0],
            "seconds_waited_in_retries": round(storage_module.OUTAGES.waited_seconds - before[1], 1),
            "connections_refused_during_outage": proxy.refused,
            "run_seconds": round(outage_seconds, 1),
            "reference_run_seconds": round(reference_seconds, 1),
            "run_ratio": round(outage_seconds / reference_seconds, 2),
            "attempts": 1,
            "steps_repeated": len(trained) - len(set(trained)),
            "checkpoints_without_marker": sorted(s for s, ok in runs.complete_checkpoints(raw).items() if not ok),
        }
        say(f"s3: outage ridden out: {ridden}")

        patience = 5.0
        os.environ["FTO_S3_PATIENCE_SECONDS"] = str(patience)
        upload_file = storage_module.Storage.upload_file
        inside: list[str] = []

        def cut_inside_checkpoint(store: Any, path: Path, uri: Any) -> Any:
            if f"/checkpoint-{2 * interval}/" in uri.key:
                inside.append(uri.key)
                if len(inside) == 2:
                    proxy.down()  # until the run gave up
            return upload_file(store, path, uri)

        storage_module.Storage.upload_file = cut_inside_checkpoint  # type: ignore[method-assign,assignment]
        raw = runs.config(steps, interval)
        say(f"s3: cut for good inside checkpoint {2 * interval}'s upload, patience {patience:.0f}s")
        code, message, failed_seconds, failed_steps = runs.run(raw)
        storage_module.Storage.upload_file = upload_file  # type: ignore[method-assign,assignment]
        proxy.up()
        partial = runs.complete_checkpoints(raw)
        os.environ.pop("FTO_S3_PATIENCE_SECONDS")
        code2, _, _, resumed_steps = runs.run(raw)
        resumed_from = resumed_steps[0] - 1 if resumed_steps else None
        beyond = {
            "patience_seconds": patience,
            "exit_code": code,
            "code": message.get("code"),
            "failed_after_seconds": round(failed_seconds, 1),
            "broken_checkpoint": 2 * interval,
            "broken_checkpoint_had_marker": partial.get(2 * interval),
            "last_step_of_failed_attempt": failed_steps[-1] if failed_steps else None,
            "next_attempt_exit_code": code2,
            "next_attempt_resumed_from_step": resumed_from,
            "steps_lost": (failed_steps[-1] - resumed_from) if failed_steps and resumed_from is not None else None,
            "checkpoint_interval": interval,
        }
        say(
            f"s3: beyond the patience: {beyond} - lost: {beyond['steps_lost']} steps "
            f"(the broken checkpoint was not resumed: {resumed_from != 2 * interval})"
        )
    shutil.rmtree(work, ignore_errors=True)
    return {"ridden_out": ridden, "beyond_patience": beyond}


def _corrupt(client: Any, bucket: str, key: str, keep_bytes: int) -> None:
    """Truncate an object in storage to `keep_bytes`, keeping its metadata (its recorded sha256)."""
    head = client.head_object(Bucket=bucket, Key=key)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[:keep_bytes], Metadata=head["Metadata"])


def corrupt_fault(steps: int = 30, interval: int = 10) -> dict[str, Any]:
    """A checkpoint's weights, then a data file, truncated in storage (core/integrity.py)."""
    import hashlib

    from finetune_trainer.core import storage as storage_module
    from finetune_trainer.core.integrity import SHA256_METADATA

    counter = storage_module.INTEGRITY
    work = Path(tempfile.mkdtemp(prefix="chaos-corrupt-"))
    with FaultProxy.to_url(os.environ["FTO_S3_ENDPOINT"]) as proxy:  # never cut: TrainerRuns goes through one
        runs = TrainerRuns(work, proxy)
        raw = runs.config(steps, interval)
        bucket = raw["output"]["uri"].split("/")[2]
        say(f"corrupt: a run of {steps} steps, a checkpoint every {interval}")
        code, _, _, _ = runs.run(raw)
        assert code == 0, "the first run failed"
        prefix = f"out/run-1/checkpoints/checkpoint-{steps}/"
        listed = runs.client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        weights = max((o for o in listed if not o["Key"].endswith("_COMPLETE")), key=lambda o: o["Size"])
        _corrupt(runs.client, bucket, weights["Key"], weights["Size"] // 2)
        raw["hyperparameters"]["maxSteps"] = steps + interval
        before = counter.retried, counter.refused
        say(f"corrupt: {weights['Key']} truncated to half; the run continued to {steps + interval} steps")
        code, message, seconds, trained = runs.run(raw)
        resumed_from = trained[0] - 1 if trained else None
        checkpoint = {
            "corrupted": f"s3://{bucket}/{weights['Key']}",
            "exit_code": code,
            "code": message.get("code"),
            "resumed_from_step": resumed_from,
            "newest_checkpoint": steps,
            "steps_lost": steps - resumed_from if resumed_from is not None else None,
            "checkpoint_interval": interval,
            "copies_read_again": counter.retried - before[0],
            "objects_refused": counter.refused - before[1],
            "run_seconds": round(seconds, 1),
        }
        say(f"corrupt: checkpoint: {checkpoint}")

        raw = runs.config(steps, interval)
        bucket = raw["output"]["uri"].split("/")[2]
        key = raw["dataset"]["train"]["uri"].split("/", 3)[3]
        body = runs.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        sha = hashlib.sha256(body).hexdigest()  # as the Files API records it
        runs.client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={SHA256_METADATA: sha})
        _corrupt(runs.client, bucket, key, len(body) // 2)
        before = counter.retried, counter.refused
        say(f"corrupt: s3://{bucket}/{key} truncated to half before a run")
        code, message, seconds, trained = runs.run(raw)
        data = {
            "corrupted": f"s3://{bucket}/{key}",
            "exit_code": code,
            "code": message.get("code"),
            "message_names_the_key": f"s3://{bucket}/{key}" in message.get("message", ""),
            "copies_read_again": counter.retried - before[0],
            "objects_refused": counter.refused - before[1],
            "steps_trained": len(trained),
            "seconds_to_refusal": round(seconds, 1),
        }
        say(f"corrupt: data: {data}")
    shutil.rmtree(work, ignore_errors=True)
    return {"checkpoint": checkpoint, "data": data}


def notready_fault(cluster: OwnCluster, logs: Path, timeout: float) -> dict[str, Any]:
    """A kwok GPU node stops responding under a running training pod (tests/support/node_loss.py)."""
    from tests.support.node_loss import lose_node

    _, core, _, custom = cluster.clients()
    with namespace_of(core, "chaos-node") as namespace:
        operator = Operator(namespace, logs / f"operator-{namespace}.log")
        try:
            time.sleep(2)
            say("notready: a kwok node stops heartbeating under a running training pod")
            figures = lose_node(core, custom, namespace, Components(cluster.state), timeout)
        finally:
            operator.stop()
    figures.pop("_nodes", None)
    say(
        f"notready: {figures} - lost: the pod's work since its last checkpoint; the run waits (and says NodeLost) "
        "until the node is deleted or tainted out-of-service"
    )
    return figures


@contextlib.contextmanager
def on_the_real_node(logs: Path, prefix: str) -> Iterator[dict[str, Any]]:
    """A namespace and a bucket of this benchmark's own on the default cluster (the one with a node that runs
    containers), the tiny model and data seeded, and an operator running on that namespace; yields the clients,
    names and URIs a fault needs. Everything is removed afterwards; nothing of other users' is touched."""
    import boto3
    from kubernetes import client, config

    from tests.support import real_node

    cache = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
    state = cache / "state"
    env = dict(
        line.split("=", 1) for line in (state / "env").read_text().splitlines() if "=" in line and line[0] != "#"
    )
    refs = dict(line.split("=", 1) for line in (cache / "images" / "refs.env").read_text().split())
    subprocess.run(
        [str(ROOT / "hack" / "import-images.sh"), f"{refs['FTO_TRAINER_IMAGE']}={refs['FTO_TRAINER_ARCHIVE']}"],
        check=True,
        capture_output=True,
    )
    api = config.new_client_from_config(config_file=str(state / "kubeconfig"))  # type: ignore[no-untyped-call]
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    install_operator_crds(api)  # a fresh cluster has none (the tests and the demo install them through the chart)
    keys = {"AWS_ACCESS_KEY_ID": env["FTO_S3_ACCESS_KEY"], "AWS_SECRET_ACCESS_KEY": env["FTO_S3_SECRET_KEY"]}
    s3 = boto3.client(
        "s3",
        endpoint_url=env["FTO_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    model, data = real_node.seed(s3, bucket, Path(tempfile.mkdtemp(prefix=f"{prefix}-")))
    with namespace_of(core, prefix) as namespace:
        core.create_namespaced_secret(
            namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="s3-creds"), string_data=keys)
        )
        log = logs / f"operator-{namespace}.log"
        with real_node.operator_process(namespace, state / "kubeconfig", refs["FTO_TRAINER_IMAGE"], log):
            yield {
                "api": api,
                "core": core,
                "custom": custom,
                "namespace": namespace,
                "state": state,
                "args": (model, data, bucket, env["FTO_POD_S3_ENDPOINT"]),
            }


def real_node_fault(logs: Path) -> dict[str, Any]:
    """Eviction and kubelet restart of a real training pod on the default cluster's real node; the kubelet is
    back and the node Ready before this returns."""
    from tests.support import real_node

    with on_the_real_node(logs, "chaos-evict") as node:
        body = real_node.manifest("evicted", *node["args"])
        node["custom"].create_namespaced_custom_object(GROUP, VERSION, node["namespace"], PLURAL, body)
        say("evict: a real trainer pod on the real node evicted past its second checkpoint; the kubelet restarted")
        figures = real_node.disrupt(
            node["core"], node["custom"], node["namespace"], "evicted", Components(node["state"])
        )
    say(f"evict: {figures} - lost: {figures['eviction']['steps_lost']} steps to the eviction, 0 to the kubelet restart")
    return figures


def serving_fault(logs: Path) -> dict[str, Any]:
    """A published model's two server pods (our engine, real node) rolled to a retrained run, then one deleted,
    under 8 clients sending requests without pause to the Service's ready pods."""
    from tests.support import serving_chaos

    with on_the_real_node(logs, "chaos-serving") as node:
        body = serving_chaos.manifest("rolled", *node["args"])
        node["custom"].create_namespaced_custom_object(GROUP, VERSION, node["namespace"], PLURAL, body)
        say("serving: 2 replicas under 8 clients; rolled to a retrained run, then a pod deleted")
        figures = serving_chaos.disrupt(node["core"], node["custom"], node["api"], node["namespace"], "rolled")
    figures["failures"] = figures["failures"][:20]
    say(
        f"serving: rollout {figures['rollout']}, pod deletion {figures['pod_deletion']} - lost: "
        f"{figures['failed']} of {figures['requests']} requests"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--faults", default="apiserver,etcd,leader,frozen,crd,s3,corrupt,notready,evict,serving")
    parser.add_argument("--s3-outage", type=float, default=30.0, help="seconds the S3 server is cut off")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--state", default="", help="state folder of the benchmark's own cluster (default: a temp dir)")
    parser.add_argument("--keep-cluster", action="store_true")
    parser.add_argument(
        "--own-ports",
        default="",
        help="the benchmark's own cluster's ports, KEY=PORT,... (keys of OWN_PORTS, e.g. FTO_API_PORT=29443), when "
        "the defaults are taken by another cluster on this machine",
    )
    parser.add_argument("--crd", type=Path, default=ROOT / "crds" / "finetunejob.yaml", help="the CRD to install")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    known = {"apiserver", "etcd", "leader", "frozen", "crd", "s3", "corrupt", "notready", "evict", "serving"}
    unknown = set(faults) - known
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    for entry in filter(None, args.own_ports.split(",")):
        key, _, port = entry.partition("=")
        if key not in OWN_PORTS or not port.isdigit():
            parser.error(f"--own-ports: {entry}: must be KEY=PORT with KEY one of {', '.join(OWN_PORTS)}")
        OWN_PORTS[key] = port
    logs = Path(tempfile.mkdtemp(prefix="chaos-logs-"))
    state = Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="fto-chaos-"))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_before": [round(x, 1) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    own = [f for f in faults if f in OWN_CLUSTER_FAULTS]
    if own:
        with OwnCluster(state, args.keep_cluster) as cluster:
            api, core, _, _ = cluster.clients()
            install_crd(api, args.crd)
            with capacity(core, args.jobs):
                run_faults(cluster, own, args, logs, results)
    run_faults(None, [f for f in faults if f not in OWN_CLUSTER_FAULTS], args, logs, results)
    results["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    results["operator_logs"] = str(logs)
    print(json.dumps(results, sort_keys=True))
    if not args.keep_cluster and not args.state:
        shutil.rmtree(state, ignore_errors=True)


# the faults that restart or stop parts of a cluster: on the benchmark's own cluster, brought up only for them
OWN_CLUSTER_FAULTS = ("apiserver", "etcd", "leader", "frozen", "crd", "notready")


def run_faults(
    cluster: OwnCluster | None, faults: list[str], args: argparse.Namespace, logs: Path, results: dict[str, Any]
) -> None:
    """Each fault in `faults`, in order; `cluster` (the benchmark's own) is there when one of them needs it."""
    for fault in faults:
        if fault in ("apiserver", "etcd", "leader", "frozen", "crd"):
            assert cluster is not None
            results[fault] = burst_fault(cluster, fault, args.jobs, logs, args.timeout)
        elif fault == "s3":
            results[fault] = s3_fault(args.s3_outage)
        elif fault == "corrupt":
            results[fault] = corrupt_fault()
        elif fault == "notready":
            assert cluster is not None
            results[fault] = notready_fault(cluster, logs, args.timeout)
        elif fault == "evict":
            results[fault] = real_node_fault(logs)
        elif fault == "serving":
            results[fault] = serving_fault(logs)


if __name__ == "__main__":
    main()
