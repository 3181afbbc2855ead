"""`helm upgrade` to a changed operator image while 50 FineTuneJobs train: nothing restarted, nothing duplicated.

The chart's operator runs in the cluster on the real node (two replicas, one leader on the Lease); 50 FineTuneJobs'
training pods run on kwok's fake nodes, scripted to finish after 45-60 s. Mid-run the release is upgraded to a
different operator image (`finetune.local/operator-next`: the same layers with one label more, so another image
and manifest digest; tests/support/oci.py), so the Deployment rolls both pods and the Lease is handed over. What
must hold: every training Job and pod that existed before the upgrade is the same object after it (uids), no
FineTuneJob got a second Job, each finishes Succeeded on its first run with no retry counted, and the operator
that acts at the end is the new image (the leader pod's image; its metrics show it created no Job).

Then a CRD upgrade with FineTuneJobs stored: the chart's CRD plus one optional field with a default (a field this
operator does not know, as when `kubectl apply -f crds/` runs before `helm upgrade`, the chart's documented
order), applied to the running API server while jobs train and after one has finished. Every stored object
still reads, now with the default (structural defaulting on read), and the operator goes on with them: the
running ones finish Succeeded on their first Job, the finished one stays Succeeded, none is failed
ConfigInvalid (every one of them was, before the fix that came with this test: core/accepted_spec.py, read by
finetunejob/controller.py). A FineTuneJob created under the new CRD is refused naming the field, which this
operator cannot honour.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import CRD_PATH, Jobs, ftj_manifest, kwok_annotations, success_message
from tests.support.crds import apply_crd, install_crd, with_spec_field
from tests.support.kwok import KWOK_NODE_SELECTOR, KWOK_TOLERATION
from tests.support.oci import relabel_archive
from tests.support.waiting import wait_for

from .chart import CHART, ROOT, helm, install_in_cluster, kubectl, lease_holder, release_pods, scrape_operator_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

JOBS = 50
NEXT_REPOSITORY = "finetune.local/operator-next"  # not the operator's own: import-images.sh keeps one tag a repository
JOB_UID = "finetune.dev/job-uid"
NEW_FIELD = "testDefaultedField"  # not a field of the CRD or the operator: a next version's new optional field


@pytest.fixture(scope="session")
def next_operator_image(operator_refs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The operator image as another image (one label more), imported into the real node; its ref."""
    tag = operator_refs["FTO_OPERATOR_IMAGE"].rsplit(":", 1)[1]
    ref = f"{NEXT_REPOSITORY}:{tag}"
    archive = tmp_path_factory.mktemp("operator-next") / "operator-next.oci.tar"
    relabel_archive(
        Path(operator_refs["FTO_OPERATOR_ARCHIVE"]),
        archive,
        ref,
        {"dev.finetune.test": "upgrade"},
    )
    subprocess.run(
        ["hack/import-images.sh", f"{ref}={archive}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=300
    )
    return ref


def _manifest(name: str, delay_seconds: int) -> dict[str, Any]:
    """A FineTuneJob whose one training pod runs on a kwok node for `delay_seconds`, then succeeds; no GPU (50
    of them would queue on the two 8-GPU kwok nodes) and no serving (nothing after Succeeded)."""
    resources = {
        "gpus": 0,
        "cpu": "100m",
        "memory": "128Mi",
        "tolerations": [KWOK_TOLERATION],
        "nodeSelector": KWOK_NODE_SELECTOR,
    }
    annotations = kwok_annotations(0, success_message(), delay=f"{delay_seconds}s")
    return ftj_manifest(name, resources=resources, podMetadata={"annotations": annotations}, serving={"enabled": False})


def _children(cluster: Any, namespace: str) -> dict[str, dict[str, set[str]]]:
    """Per FineTuneJob uid: the uids of its Jobs and of their pods (two lists, not one per FineTuneJob)."""
    out: dict[str, dict[str, set[str]]] = {}
    job_owner: dict[str, str] = {}
    for job in cluster.batch.list_namespaced_job(namespace, label_selector=JOB_UID).items:
        owner = job.metadata.labels[JOB_UID]
        out.setdefault(owner, {"jobs": set(), "pods": set()})["jobs"].add(job.metadata.uid)
        job_owner[job.metadata.name] = owner
    for pod in cluster.core.list_namespaced_pod(namespace, label_selector="batch.kubernetes.io/job-name").items:
        owner = job_owner.get(pod.metadata.labels["batch.kubernetes.io/job-name"], "?")
        out.setdefault(owner, {"jobs": set(), "pods": set()})["pods"].add(pod.metadata.uid)
    return out


def _all(jobs: Jobs, namespace: str) -> dict[str, dict[str, Any]]:
    items = jobs.cluster.custom.list_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "finetunejobs")
    return {item["metadata"]["name"]: item for item in items["items"]}


def _running_pods(cluster: Any, namespace: str) -> int:
    pods = cluster.core.list_namespaced_pod(namespace, label_selector="batch.kubernetes.io/job-name").items
    return sum(1 for p in pods if p.status.phase == "Running")


def test_helm_upgrade_to_another_image_under_50_running_jobs_restarts_and_duplicates_nothing(
    cluster: Any, namespace: str, crd: str, operator_image: str, next_operator_image: str, jobs: Jobs
) -> None:
    started = time.monotonic()
    with install_in_cluster(cluster, namespace, operator_image, "--set", "validation.enabled=false") as release:
        fullname = f"{release}-finetune-operator"
        old_pods = {p.metadata.name for p in release_pods(cluster, namespace, release)}
        wait_for("a leader among the replicas", lambda: lease_holder(cluster, namespace, fullname) or None)
        installed = time.monotonic()
        names = [f"up-{i:02d}" for i in range(JOBS)]
        for i, name in enumerate(names):
            jobs.create(namespace, _manifest(name, 45 + (i % 4) * 5))
        wait_for(
            f"{JOBS} training pods running and every FineTuneJob Training",
            lambda: (
                _running_pods(cluster, namespace) == JOBS
                and all((o.get("status") or {}).get("phase") == "Training" for o in _all(jobs, namespace).values())
            ),
            timeout=120,
            interval=1,
        )
        training = time.monotonic()
        before = _children(cluster, namespace)
        before_status = {n: o["status"] for n, o in _all(jobs, namespace).items()}
        assert len(before) == JOBS and all(len(c["jobs"]) == 1 and len(c["pods"]) == 1 for c in before.values())

        helm(
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--set",
            f"image.repository={NEXT_REPOSITORY}",
            "--wait",
            "--timeout",
            "3m",
            kubeconfig=cluster.kubeconfig,
        )
        wait_for(
            "the Lease held by a pod of the new image",
            lambda: (holder := lease_holder(cluster, namespace, fullname)) and holder not in old_pods,
            timeout=120,
        )
        handed_over = time.monotonic()
        leader = lease_holder(cluster, namespace, fullname)
        pods = release_pods(cluster, namespace, release)
        live = [p for p in pods if not p.metadata.deletion_timestamp]
        assert {p.spec.containers[0].image for p in live} == {next_operator_image}
        assert leader in {p.metadata.name for p in live}
        still_training = _running_pods(cluster, namespace)

        wait_for(
            f"all {JOBS} FineTuneJobs Succeeded",
            lambda: all((o.get("status") or {}).get("phase") == "Succeeded" for o in _all(jobs, namespace).values()),
            timeout=240,
            interval=1,
        )
        succeeded = time.monotonic()
        after = _children(cluster, namespace)
        after_status = {n: o["status"] for n, o in _all(jobs, namespace).items()}
        assert after == before  # the same Job and the same pod for each FineTuneJob: none deleted, none added
        for name in names:
            was, now = before_status[name], after_status[name]
            assert now["run"] == was["run"] == 1, name
            assert int(now.get("attempts") or 0) == int(was.get("attempts") or 0) <= 1, name
            assert not now.get("error"), name
        # the new image's leader did the finishing and created nothing: every Job above was its predecessor's
        metrics = scrape_operator_metrics(cluster, namespace, f"pod/{leader}")
        assert f'finetune_operator_finetunejobs{{phase="Succeeded"}} {JOBS}.0' in metrics
        assert not re.search(r'^finetune_operator_child_create_seconds_count\{kind="Job"\} [1-9]', metrics, re.M)
        assert still_training > 0  # some runs finished under the new leader (status continued across it)
        print(
            f"\n[upgrade] install {installed - started:.1f}s, {JOBS} pods running {training - installed:.1f}s, "
            f"upgrade + handover {handed_over - training:.1f}s ({still_training} pods still running then), "
            f"all Succeeded {succeeded - handed_over:.1f}s later; total {time.monotonic() - started:.1f}s"
        )


def test_a_crd_upgrade_adding_a_defaulted_field_reads_stored_jobs_with_it_and_fails_none(
    cluster: Any, namespace: str, crd: str, operator_image: str, jobs: Jobs
) -> None:
    started = time.monotonic()
    with install_in_cluster(cluster, namespace, operator_image, "--set", "validation.enabled=false") as release:
        fullname = f"{release}-finetune-operator"
        leader = wait_for("a leader", lambda: lease_holder(cluster, namespace, fullname) or None)
        jobs.create(namespace, _manifest("crd-done", 1))
        training = [f"crd-{i}" for i in range(4)]
        for name in training:
            jobs.create(namespace, _manifest(name, 40))
        jobs.wait_phase(namespace, "crd-done", "Succeeded", timeout=60)
        for name in training:
            jobs.wait_phase(namespace, name, "Training", timeout=60)
        before = _children(cluster, namespace)
        stored = [*training, "crd-done"]

        body = yaml.safe_load(CRD_PATH.read_text())
        schema = {"type": "string", "default": "on", "description": "A test-only field with a default."}
        try:
            apply_crd(cluster.api_client, with_spec_field(body, NEW_FIELD, schema))
            changed = time.monotonic()
            wait_for(
                "every stored FineTuneJob read with the new field's default",
                lambda: all(o["spec"].get(NEW_FIELD) == "on" for o in _all(jobs, namespace).values()),
                timeout=30,
            )
            assert all(jobs.get(namespace, name)["spec"][NEW_FIELD] == "on" for name in stored)
            # an event for each (a metadata change: no new generation), so the operator reads the defaulted
            # bodies now, while four of them still train
            for name in stored:
                jobs.cluster.custom.patch_namespaced_custom_object(
                    "finetune.dev", "v1alpha1", namespace, "finetunejobs", name, {"metadata": {"labels": {"t": "1"}}}
                )

            def read_with_the_field() -> bool:
                logs = kubectl("logs", "-n", namespace, f"pod/{leader}", kubeconfig=cluster.kubeconfig).stdout
                return all(f"{namespace}/{name}: spec.{NEW_FIELD} not known" in logs for name in stored)

            wait_for("the operator reading each stored job with the field", read_with_the_field, timeout=60)
            assert {n: o["status"]["phase"] for n, o in _all(jobs, namespace).items()} == {
                **dict.fromkeys(training, "Training"),
                "crd-done": "Succeeded",
            }

            def finished() -> bool:
                phases = {n: o["status"]["phase"] for n, o in _all(jobs, namespace).items()}
                assert "Failed" not in phases.values(), phases
                return set(phases.values()) == {"Succeeded"}

            wait_for("the training jobs Succeeded, none Failed", finished, timeout=120, interval=1)
            assert _children(cluster, namespace) == before  # the same Job and pod each, nothing added
            for name in stored:
                status = jobs.status(namespace, name)
                assert status["run"] == 1 and not status.get("error"), (name, status)

            # created under the new CRD: the default is stored, and this operator refuses what it cannot honour
            jobs.create(namespace, _manifest("crd-new", 1))
            refused = jobs.wait_phase(namespace, "crd-new", "Failed", timeout=30)
            assert refused["error"]["code"] == "ConfigInvalid" and f"spec.{NEW_FIELD}" in refused["error"]["message"]
        finally:
            install_crd(cluster.api_client, CRD_PATH)
        # the CRD as it was: the field is pruned on read again, from objects written while it existed too
        wait_for(
            "the field gone once the CRD is restored",
            lambda: all(NEW_FIELD not in o["spec"] for o in _all(jobs, namespace).values()),
            timeout=30,
        )
        print(
            f"\n[crd] jobs Succeeded {time.monotonic() - changed:.1f}s after the CRD change; "
            f"total {time.monotonic() - started:.1f}s"
        )
