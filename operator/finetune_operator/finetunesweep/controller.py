"""The FineTuneSweep control loop: its memory (sweeps and their trials) and one level-triggered pass per sweep.

A pass reads the sweep and its trials from memory, asks the pure `plan.sweep_plan` what should be, creates
the missing trial FineTuneJobs (create-if-absent under deterministic names, so a restarted operator or two
passes racing never make a trial twice), suspends the trials the early-stopping rule stops, promotes the
winner when asked, and writes the status once, only when it changed. The trials themselves are ordinary
FineTuneJobs run by the FineTuneJob loop (finetunejob/controller.py); trial events only file the trial in the
sweep's memory (store.py) and queue the sweep (registration.py).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from finetune_operator import GROUP, KIND, VERSION
from finetune_operator.api.base import invalid_spec_message
from finetune_operator.api.finetunesweep import (
    ANNOTATION_PARAMETERS,
    ANNOTATION_STOPPED,
    SWEEP_KIND,
    SweepSpec,
    parse_sweep_spec,
    sweep_without_unknown_fields,
)
from finetune_operator.api.objects import Event, Owner
from finetune_operator.api.ownership import controlled_by
from finetune_operator.core.accepted_spec import AcceptedSpecs
from finetune_operator.core.errors import NameTaken, PermanentError, TemporaryError
from finetune_operator.core.kube import Kube
from finetune_operator.core.status_patch import merge_patch, now_rfc3339
from finetune_operator.core.store import Key
from finetune_operator.core.workqueue import RequeueError
from finetune_operator.finetunesweep.plan import SweepPlan, SweepSnapshot, sweep_plan
from finetune_operator.finetunesweep.store import SweepStore

log = logging.getLogger(__name__)


class SweepReconciler:
    def __init__(self, kube: Kube, sweeps: SweepStore | None = None) -> None:
        self.kube, self.sweeps = kube, sweeps or SweepStore()
        # specs read as accepted across a CRD upgrade that adds a defaulted field (core.accepted_spec)
        self.accepted: AcceptedSpecs[SweepSpec] = AcceptedSpecs(
            SWEEP_KIND, parse_sweep_spec, sweep_without_unknown_fields
        )

    def reconcile(self, key: Key) -> float | None:
        """One pass; temporary API trouble goes back to the queue with its delay."""
        try:
            self._reconcile(key)
        except TemporaryError as error:
            raise RequeueError(str(error), error.delay) from error
        return None

    def _reconcile(self, key: Key) -> None:
        view = self.sweeps.view(key)
        if view is None:
            return
        body, trials = view
        meta = body["metadata"]
        assert isinstance(meta, dict)
        if meta.get("deletionTimestamp"):
            return
        status = body.get("status") or {}
        assert isinstance(status, dict)
        generation = int(str(meta.get("generation") or 1))
        owner = Owner(str(meta["namespace"]), str(meta["name"]), str(meta["uid"]))
        try:
            refused = (status.get("error") or {}).get("code") == "ConfigInvalid"
            spec, _raw = self.accepted.read(body, refused_before=refused)
        except ValidationError as error:
            message = invalid_spec_message(error)
            error_status = {"code": "ConfigInvalid", "message": message[:4096]}
            failed = {"observedGeneration": generation, "phase": "Failed", "error": error_status}
            self._write_status(body, failed)
            return
        snapshot = SweepSnapshot(
            owner=owner, generation=generation, spec=spec, status=status, trials=trials, now=now_rfc3339()
        )
        decided = sweep_plan(snapshot)
        try:
            self._execute(owner, decided)
        except PermanentError as error:
            # status.trials keeps only what existed before: a trial the API refused was never made
            failed = {"phase": "Failed", "error": {"code": "ConfigInvalid", "message": str(error)[:4096]}}
            decided.status = {**decided.status, "trials": status.get("trials"), **failed}
        self._write_status(body, decided.status)
        for event in decided.events:
            self._event(owner, event)

    def prune(self) -> int:
        """At each resync: the trials filed under no live sweep, and the unknown-field warnings' memory of the
        sweeps no longer held. How many trial groups went."""
        dropped = self.sweeps.prune()
        self.accepted.prune(lambda uid: self.sweeps.key_of(uid) is not None)
        return dropped

    def _event(self, owner: Owner, event: Event) -> None:
        """Best effort (post_event never raises a temporary error): Events are for humans."""
        self.kube.post_event(owner, event.type, event.reason, event.message, kind=SWEEP_KIND)

    def _execute(self, owner: Owner, decided: SweepPlan) -> None:
        for manifest in decided.create:
            name = manifest["metadata"]["name"]
            not_ours = (
                f"FineTuneJob {owner.namespace}/{name} exists and is not a trial of this sweep (a FineTuneJob "
                "of its own, or an earlier sweep's published winner): rename the sweep or remove that job"
            )
            try:
                created = self.kube.create(manifest)
            except NameTaken as error:
                raise PermanentError(not_ours) from error
            if created is None:  # made by an earlier pass or operator: adopt what is there, if it is ours
                created = self.kube.get(f"{GROUP}/{VERSION}", KIND, owner.namespace, name)
                if created is not None and not controlled_by(created, owner.namespace, owner.uid):
                    raise PermanentError(not_ours)
            else:
                log.info("sweep %s/%s: created trial %s", owner.namespace, owner.name, name)
                values = manifest["metadata"]["annotations"][ANNOTATION_PARAMETERS]
                self._event(owner, Event("Normal", "TrialCreated", f"{name}: {values}"))
            if created is not None:
                self.sweeps.put_trial(owner.uid, created)
        # Stops and the publish go only to trials `is_trial` admitted (the plan saw no other), each patch bound to
        # the trial's uid: a FineTuneJob re-made under the name since is refused by the API server, not patched.
        for stop in decided.stop:
            log.info("sweep %s/%s: stopping trial %s (%s)", owner.namespace, owner.name, stop.name, stop.reason)
            patch = {"metadata": {"annotations": {ANNOTATION_STOPPED: stop.reason}}, "spec": {"suspend": True}}
            self.kube.merge_patch(f"{GROUP}/{VERSION}", KIND, owner.namespace, stop.name, patch, uid=stop.uid)
        if decided.publish is not None:
            log.info("sweep %s/%s: publishing winner %s", owner.namespace, owner.name, decided.publish.name)
            publish = decided.publish
            self.kube.merge_patch(
                f"{GROUP}/{VERSION}", KIND, owner.namespace, publish.name, publish.patch, uid=publish.uid
            )

    def _write_status(self, body: dict[str, Any], new: dict[str, Any]) -> None:
        meta, old = body["metadata"], body.get("status") or {}
        assert isinstance(meta, dict) and isinstance(old, dict)
        patch = merge_patch(old, new)
        if patch:
            patched = self.kube.patch_status(
                str(meta["namespace"]), str(meta["name"]), patch, str(meta["resourceVersion"]), kind=SWEEP_KIND
            )
            self.sweeps.put_sweep(patched)
