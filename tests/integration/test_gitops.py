"""GitOps: once the operator has reconciled a FineTuneJob, re-applying the same manifest changes nothing.

Why it matters: Argo CD and Flux re-apply on every sync. If the operator wrote anything into what a user
applies (spec, labels, annotations, finalizers), every sync would be a diff and a write, and the two would
fight forever. The operator writes status only, so a re-apply is a no-op: same resourceVersion, same
generation, `kubectl diff` empty, and no field manager but the user's owns anything outside status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import kubectl

from .conftest import Jobs, Operator, ftj_manifest, success_message, wait_for

pytestmark = pytest.mark.cluster

OPERATOR_MANAGER = "finetune-operator"


def _settled(jobs: Jobs, namespace: str, name: str) -> dict[str, Any]:
    """The object once nothing wrote it for 3 s (the Job controller's last updates reach status late)."""
    last: dict[str, Any] = {}

    def quiet() -> dict[str, Any] | None:
        nonlocal last
        body = jobs.get(namespace, name)
        same = last and body["metadata"]["resourceVersion"] == last["metadata"]["resourceVersion"]
        last = body
        return body if same else None

    return wait_for(f"{name} to settle", quiet, timeout=60, interval=3)


def _reconciled(jobs: Jobs, namespace: str, name: str) -> dict[str, Any]:
    """Train to Succeeded (kwok plays the trainer): the status is as full as it gets."""
    pod = jobs.running_pod(namespace, f"{name}-r1")
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message())
    jobs.wait_phase(namespace, name, "Succeeded")
    return _settled(jobs, namespace, name)


def _assert_operator_wrote_only_status(body: dict[str, Any], user_managers: set[str]) -> None:
    meta = body["metadata"]
    assert not meta.get("finalizers")
    assert not [k for k in meta.get("annotations", {}) if "kopf" in k or "finetune.dev" in k]
    for entry in meta["managedFields"]:
        if entry["manager"] in user_managers:
            assert entry.get("subresource", "") == "", entry  # users never own status
            continue
        # anyone else (the operator, and the trainer in real runs) wrote through the status subresource only
        assert entry.get("subresource") == "status", entry
    managers = {e["manager"] for e in meta["managedFields"] if e.get("subresource") == "status"}
    assert OPERATOR_MANAGER in managers
    assert body["status"]["observedGeneration"] == meta["generation"]


def test_kubectl_reapply_after_reconcile_is_a_no_op(
    operator: Operator, jobs: Jobs, namespace: str, tmp_path: Path
) -> None:
    kc = jobs.cluster.kubeconfig
    manifest = tmp_path / "ftj.yaml"
    manifest.write_text(
        yaml.safe_dump({**ftj_manifest("client-side"), "metadata": {"name": "client-side", "namespace": namespace}})
    )
    kubectl("apply", "-f", str(manifest), kubeconfig=kc)
    before = _reconciled(jobs, namespace, "client-side")

    diff = kubectl("diff", "-f", str(manifest), kubeconfig=kc, check=False)
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout + diff.stderr
    applied = kubectl("apply", "-f", str(manifest), kubeconfig=kc)
    assert "unchanged" in applied.stdout
    after = jobs.get(namespace, "client-side")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["generation"] == 1
    _assert_operator_wrote_only_status(after, {"kubectl-client-side-apply"})


def test_server_side_reapply_after_reconcile_is_a_no_op(
    operator: Operator, jobs: Jobs, namespace: str, tmp_path: Path
) -> None:
    """Argo CD with ServerSideApply=true applies as field manager argocd-controller."""
    kc = jobs.cluster.kubeconfig
    manifest = tmp_path / "ftj.yaml"
    manifest.write_text(
        yaml.safe_dump({**ftj_manifest("server-side"), "metadata": {"name": "server-side", "namespace": namespace}})
    )
    ssa = ("apply", "--server-side", "--field-manager=argocd-controller", "-f", str(manifest))
    kubectl(*ssa, kubeconfig=kc)
    before = _reconciled(jobs, namespace, "server-side")

    kubectl(*ssa, kubeconfig=kc)  # no --force-conflicts: the operator owns no field the user applies
    diff = kubectl(
        "diff",
        "--server-side",
        "--field-manager=argocd-controller",
        "-f",
        str(manifest),
        kubeconfig=kc,
        check=False,
    )
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout + diff.stderr
    after = jobs.get(namespace, "server-side")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["metadata"]["generation"] == 1
    _assert_operator_wrote_only_status(after, {"argocd-controller"})


def test_a_changed_manifest_is_observed_and_still_never_rewritten(
    operator: Operator, jobs: Jobs, namespace: str, tmp_path: Path
) -> None:
    """A real GitOps change (suspend) bumps the generation once; the operator observes it, writes no spec."""
    kc = jobs.cluster.kubeconfig
    manifest = tmp_path / "ftj.yaml"
    body = {**ftj_manifest("changed"), "metadata": {"name": "changed", "namespace": namespace}}
    ssa = ("apply", "--server-side", "--field-manager=argocd-controller", "-f", str(manifest))
    manifest.write_text(yaml.safe_dump(body))
    kubectl(*ssa, kubeconfig=kc)
    jobs.wait_phase(namespace, "changed", "Training")
    body["spec"]["suspend"] = True
    manifest.write_text(yaml.safe_dump(body))
    kubectl(*ssa, kubeconfig=kc)
    suspended = jobs.wait_phase(namespace, "changed", "Suspended")
    assert suspended["observedGeneration"] == 2
    version = _settled(jobs, namespace, "changed")["metadata"]["resourceVersion"]
    kubectl(*ssa, kubeconfig=kc)
    after = jobs.get(namespace, "changed")
    assert after["metadata"]["resourceVersion"] == version and after["metadata"]["generation"] == 2
    _assert_operator_wrote_only_status(after, {"argocd-controller"})
