"""A new FineTuneJob's first pass: its trainer Role is made with the current rules, so it is not read first (one
request and one round trip fewer before the data check's pod, per job); a Role that was already there is still
read and checked, by the next pass (finetunejob/controller.py)."""

from __future__ import annotations

import copy
from typing import Any

from finetune_operator.api.labels import Names
from finetune_operator.builders.rbac import trainer_rules_hash
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Store
from finetune_operator.finetunejob.controller import Reconciler

from .support import OWNER, RecordingKube, minimal, new_job_body

BODY = new_job_body(minimal(storage={}))
ROLE = ("Role", Names.of(OWNER.name).trainer_account)


def _pass_maker(kube: RecordingKube) -> Any:
    """One operator process: each call is its next pass over the job."""
    store = Store()
    loop = Reconciler(kube, store, Settings(trainer_image="trainer:test"))  # type: ignore[arg-type]
    key = store.put_body(copy.deepcopy(kube.body))
    return lambda: loop.reconcile(key)


def test_a_new_jobs_role_is_made_not_read_and_its_rules_are_recorded() -> None:
    kube = RecordingKube(copy.deepcopy(BODY))
    next_pass = _pass_maker(kube)
    next_pass()
    next_pass()
    assert "Role" in kube.created and ROLE not in kube.reads
    assert kube.patches[0]["trainerRulesHash"] == trainer_rules_hash(OWNER)


def test_a_role_already_there_when_the_job_is_new_is_read_by_the_next_pass() -> None:
    """An operator that made the Role and stopped before writing any status (an older one, perhaps with other
    rules): this pass's create finds it, so nothing is recorded, and the next pass reads it and checks."""
    kube = RecordingKube(copy.deepcopy(BODY), existing=("Role",))
    next_pass = _pass_maker(kube)
    next_pass()
    assert ROLE not in kube.reads and "trainerRulesHash" not in kube.patches[0]
    next_pass()
    assert ROLE in kube.reads
    assert kube.body["status"]["trainerRulesHash"] == trainer_rules_hash(OWNER)  # (the fake read found no Role)
