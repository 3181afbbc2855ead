"""A CRD upgrade that adds a defaulted field, with a FineTuneSweep and a ModelServer stored, on a real API server.

The chart's documented order applies the new CRDs before the new operator runs; from then on the API server shows
the new field's default on every stored object (structural defaulting on read). The operator of this tree does
not know the field. What must hold (core/accepted_spec.py): the generation it already accepted goes on as
accepted (the sweep is not Failed ConfigInvalid and its next trial is made from the template without the field;
the server is not Ready=False ConfigInvalid), the fields read away are named in one warning per object, and a new
generation, which carries the field too, is refused naming it. The FineTuneJob's half of this runs in
tests/helm/test_upgrade_running_jobs.py (the chart, 50 jobs); here the two other kinds, with no chart.

Then the fault `bench/chaos.py --faults crd` runs at 200 jobs, smaller: the FineTuneJob CRD changed the same way
under a burst of 20 kwok-played jobs once each was accepted, most still training: none fails ConfigInvalid, each
has one Job, all Succeed (tests/support/crd_change.py).

The CRDs are cluster-wide: each is put back as the repository has it at the end, whatever happened.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support import burst, crd_change
from tests.support.crds import CRDS, apply_crd, install_crd, with_spec_field

from .conftest import GROUP, VERSION, Jobs, Operator, wait_for
from .test_modelserver import _create_server, _ready, _server, _server_status
from .test_sweeps import Sweeps, scripted, sweep_manifest

pytestmark = pytest.mark.cluster

NEW_FIELD = "testDefaultedField"  # a field neither the CRDs nor this operator know: a next version's new field
SCHEMA = {"type": "string", "default": "on", "description": "A test-only field with a default."}


@pytest.fixture
def restored_crds(cluster: Any, crd: str) -> Iterator[None]:
    """The sweep CRD installed; on the way out every CRD this test changes is as the repository has it."""
    install_crd(cluster.api_client, CRDS / "finetunesweep.yaml")
    yield
    for file in ("finetunesweep.yaml", "modelserver.yaml"):
        install_crd(cluster.api_client, CRDS / file)


def _upgraded(file: str, under: tuple[str, ...] = ()) -> dict[str, Any]:
    body = yaml.safe_load((CRDS / file).read_text())
    return with_spec_field(body, NEW_FIELD, SCHEMA, under)


def _read_with_the_default(jobs: Jobs, operator: Operator, plural: str, name: str, pattern: str) -> None:
    """Touch the object (a metadata change: no new generation) until the operator logs `pattern`. Why again and
    again: the API server ends the watches of a CRD's old storage only some time after the CRD changed (up to a
    minute), and until then an event carries the object without the new default; kopf's next watch does."""
    namespace = operator.namespaces[0]
    touches = iter(range(1_000_000))

    def logged() -> bool:
        if re.search(pattern, operator.log_path.read_text(errors="replace")):
            return True
        patch = {"metadata": {"labels": {"touched": str(next(touches))}}}
        jobs.cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, patch)
        return False

    wait_for(f"the operator reading {plural}/{name} with the default", logged, timeout=150, interval=2)


def test_a_crd_upgrade_adding_a_defaulted_field_fails_no_stored_sweep_or_server(
    restored_crds: None, operator: Operator, jobs: Jobs, namespace: str
) -> None:
    sweeps = Sweeps(jobs, namespace)
    sweeps.create(sweep_manifest("up", parallelism=1))
    _create_server(jobs, namespace, _server("srv", replicas=1))
    first = wait_for("the sweep's first trial", lambda: t if len(t := sweeps.trials("up")) == 1 else None)
    wait_for("the sweep accepted", lambda: sweeps.status("up").get("observedGeneration") == 1)
    wait_for("the server accepted", lambda: _server_status(jobs, namespace, "srv").get("observedGeneration") == 1)
    assert _ready(_server_status(jobs, namespace, "srv"))["reason"] != "ConfigInvalid"

    # the new CRDs: the field on the sweep itself and in its template (a FineTuneJob spec), and on the server
    sweep_crd = with_spec_field(_upgraded("finetunesweep.yaml"), NEW_FIELD, SCHEMA, ("template",))
    apply_crd(jobs.cluster.api_client, sweep_crd)
    apply_crd(jobs.cluster.api_client, _upgraded("modelserver.yaml"))
    sweep = wait_for(
        "the stored sweep read with the defaults",
        lambda: (
            (b := jobs.cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunesweeps", "up"))[
                "spec"
            ].get(NEW_FIELD)
            == "on"
            and b
        ),
        timeout=30,
    )
    assert sweep["spec"]["template"][NEW_FIELD] == "on"
    server = jobs.cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", "srv")
    assert server["spec"][NEW_FIELD] == "on"
    _read_with_the_default(
        jobs,
        operator,
        "finetunesweeps",
        "up",
        rf"FineTuneSweep {namespace}/up: spec\.template\.{NEW_FIELD}, spec\.{NEW_FIELD} not known to this operator",
    )
    _read_with_the_default(
        jobs, operator, "modelservers", "srv", rf"ModelServer {namespace}/srv: spec\.{NEW_FIELD} not known"
    )

    # the sweep goes on: its first trial finishes, the second is made (the sweep's
    # planner read the template as accepted)
    wait_for("t0 told to finish", lambda: sweeps.admit_and_finish(sweeps.trials("up")[0], scripted), timeout=90)
    second = wait_for("the second trial", lambda: t if len(t := sweeps.trials("up")) == 2 else None, timeout=60)
    assert second[0]["metadata"]["uid"] == first[0]["metadata"]["uid"]  # the same trial, not a new one
    status = sweeps.status("up")
    assert status.get("phase") != "Failed" and not status.get("error"), status
    assert _ready(_server_status(jobs, namespace, "srv"))["reason"] != "ConfigInvalid"
    log = operator.log_path.read_text(errors="replace")
    assert log.count(f"FineTuneSweep {namespace}/up: spec.") == 1  # one warning, however many passes

    # a new generation carries the field too: refused naming it
    jobs.cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelservers", "srv", {"spec": {"replicas": 2}}
    )
    refused = wait_for(
        "the server's new generation refused",
        lambda: (r := _ready(_server_status(jobs, namespace, "srv")))["reason"] == "ConfigInvalid" and r,
    )
    assert f"spec.{NEW_FIELD}" in refused["message"]
    jobs.cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "finetunesweeps", "up", {"spec": {"parallelism": 2}}
    )
    failed = wait_for("the sweep's new generation refused", lambda: (s := sweeps.status("up")).get("error") and s)
    assert failed["phase"] == "Failed" and failed["error"]["code"] == "ConfigInvalid"
    assert f"spec.{NEW_FIELD}" in failed["error"]["message"]


BURST = 20


def test_a_crd_upgrade_under_a_burst_of_running_jobs_fails_none_and_duplicates_none(
    cluster: Any, operator: Operator, namespace: str
) -> None:
    burst.create(cluster.custom, namespace, BURST, delay="15s")
    names = wait_for(
        "every job accepted", lambda: crd_change.all_accepted(cluster.custom, namespace, BURST), timeout=120
    )
    try:
        crd_change.change_crd(cluster.api_client, cluster.custom, namespace, names)
        at_change = burst.census(cluster.custom, cluster.batch, namespace)
        statuses = crd_change.wait_finished(cluster.custom, namespace, BURST, timeout=240)
    finally:
        crd_change.restore_crd(cluster.api_client)
    assert at_change.succeeded < BURST  # the change came while jobs ran, not after
    assert crd_change.config_invalid(statuses) == []
    final = burst.census(cluster.custom, cluster.batch, namespace)
    assert final.succeeded == BURST and not final.duplicates and not final.orphans, final
    log = operator.log_path.read_text(errors="replace")
    assert f"spec.{crd_change.FIELD} not known to this operator" in log
