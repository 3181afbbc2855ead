"""One level-triggered reconcile pass for one FineTuneJob: read memory, decide (pure plan), act, write status.

Every trigger (create, update, resume after a restart, a child's event, a timer) ends here, and the pass
never asks "what happened?", only "what is, and what should be?". Status is patched once, only when it
changed, with the resourceVersion it was computed from (a stale pass is refused and simply runs again).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from finetune_operator import KIND
from finetune_operator.api.base import invalid_spec_message
from finetune_operator.api.finetunejob import FineTuneJobSpec, parse_spec
from finetune_operator.api.labels import ANNOTATION_RETRY, Names
from finetune_operator.api.modelserver import server_ref
from finetune_operator.api.objects import Manifest, Owner
from finetune_operator.api.ownership import controlled_by
from finetune_operator.builders.apikey import (
    ANNOTATION_KEY_SHA256,
    generate_key,
    key_secret,
    recorded_sha256,
    sha256_hex,
)
from finetune_operator.builders.apikey import COMPONENT as KEY_COMPONENT
from finetune_operator.builders.common import metadata
from finetune_operator.builders.rbac import outdated_role, trainer_role, trainer_rules_hash
from finetune_operator.core.accepted_spec import AcceptedSpecs
from finetune_operator.core.errors import NameTaken, PermanentError, TemporaryError
from finetune_operator.core.kube import Kube
from finetune_operator.core.metrics import (
    JOBS_BY_PHASE,
    NODE_PRESSURE_EVICTIONS,
    PHASES,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
    RECONCILES,
)
from finetune_operator.core.observed import deployment_obs, job_obs, pod_obs
from finetune_operator.core.settings import Settings
from finetune_operator.core.status_patch import StatusPace, merge_patch, now_rfc3339
from finetune_operator.core.store import Key, Store
from finetune_operator.core.workqueue import RequeueError
from finetune_operator.finetunejob.apikey import ApiKey, needs_key, recorded_key
from finetune_operator.finetunejob.plan import Plan, Snapshot, plan, secrets_to_check

log = logging.getLogger(__name__)


def invalid_spec_status(error: ValidationError, generation: int) -> dict[str, Any]:
    """Status of a body the typed model refuses (the CRD normally prevents this)."""
    message = invalid_spec_message(error)
    return {
        "observedGeneration": generation,
        "phase": "Failed",
        "error": {"code": "ConfigInvalid", "message": message[:4096]},
    }


class Reconciler:
    def __init__(self, kube: Kube, store: Store, settings: Settings, pool: Executor | None = None) -> None:
        self.kube, self.store, self.settings = kube, store, settings
        # Independent requests of one pass (the objects a Job needs) go out side by side.
        self.pool = pool or ThreadPoolExecutor(max_workers=8, thread_name_prefix="children")
        # Events go out on their own threads: best effort, they must not queue ahead of a pass's creates (at 500
        # new jobs they were 1,500 posts in the first 50 s on the children's 8 threads).
        self.events = pool or ThreadPoolExecutor(max_workers=2, thread_name_prefix="events")
        # a status patch that only rewords conditions waits until a moment after the last (core.status_patch)
        self.pace = StatusPace()
        # The jobs whose trainer Role this process has checked against the current rules. Kept here, not read
        # from status.trainerRulesHash: whoever may patch a job's status could otherwise skip the repair of an
        # older operator's Role. One GET per job per process start; a uid is a few dozen bytes.
        self._rules_checked: set[str] = set()
        self._rules_lock = threading.Lock()
        # specs read as accepted across a CRD upgrade that adds a defaulted field (core.accepted_spec)
        self.accepted: AcceptedSpecs[FineTuneJobSpec] = AcceptedSpecs(KIND, parse_spec)

    def reconcile(self, key: Key) -> float | None:
        """One pass; returns seconds until the next pass is needed (None: wait for events)."""
        with RECONCILE_SECONDS.time():
            try:
                requeue = self._reconcile(key)
            except TemporaryError as error:
                RECONCILES.labels("retry").inc()
                RECONCILE_ERRORS.labels("temporary").inc()
                raise RequeueError(str(error), error.delay) from error
            except Exception:
                RECONCILE_ERRORS.labels("unexpected").inc()
                raise
        RECONCILES.labels("ok").inc()
        return requeue

    def prune(self) -> int:
        """At each resync: the store's children that name no live owner, and the per-job memories of this loop
        (the Role check, the unknown-field warnings) for uids the store no longer holds. How many store groups went."""
        dropped = self.store.prune()
        self.accepted.prune(lambda uid: self.store.key_of(uid) is not None)
        with self._rules_lock:
            self._rules_checked = {uid for uid in self._rules_checked if self.store.key_of(uid) is not None}
        self.pace.keep_only(lambda uid: self.store.key_of(uid) is not None)
        return dropped

    def forget(self, uid: str) -> None:
        """A FineTuneJob was deleted: drop this loop's per-job memories of it."""
        self.accepted.forget(uid)
        self.pace.forget(uid)
        with self._rules_lock:
            self._rules_checked.discard(uid)

    def _reconcile(self, key: Key) -> float | None:
        view = self.store.view(key)
        if view is None or view.body["metadata"].get("deletionTimestamp"):
            return None
        meta, status = view.body["metadata"], view.body.get("status") or {}
        owner = Owner(meta["namespace"], meta["name"], meta["uid"])
        generation = int(meta.get("generation") or 1)
        try:
            refused = (status.get("error") or {}).get("code") == "ConfigInvalid"
            spec, _raw = self.accepted.read(view.body, refused_before=refused)
        except ValidationError as error:
            self._write_status(view.body, invalid_spec_status(error, generation))
            return None
        retry_token = str((meta.get("annotations") or {}).get(ANNOTATION_RETRY, ""))
        snapshot = Snapshot(
            owner=owner,
            generation=generation,
            spec=spec,
            status=status,
            jobs=view.jobs,
            pods=view.pods,
            deployment=view.deployment,
            now=now_rfc3339(),
            retry_token=retry_token,
            progress=view.progress,
        )
        if spec.serving.server:  # shared serving: the verdict is in the server's status (modelserver/controller.py)
            snapshot = replace(snapshot, server=self.store.server(server_ref(spec.serving.server, owner.namespace)))
        if self.settings.secret_check and (names := secrets_to_check(snapshot, self.settings)):
            absent = tuple(n for n in names if not self.kube.exists_metadata("v1", "Secret", owner.namespace, n))
            snapshot = replace(snapshot, secret_present=not absent, absent_secrets=absent)
        with self._rules_lock:
            checked = owner.uid in self._rules_checked
        # A job no operator has written a status for yet: its Role is made in this pass, with the current rules,
        # and a Role this pass makes (201) needs no read; one that was there already is checked by the next pass.
        role_made_now = not checked and not status
        if not checked and not role_made_now:
            rules = self._trainer_rules(owner)
            snapshot = replace(snapshot, trainer_rules=rules)
            if rules is not None:
                with self._rules_lock:
                    self._rules_checked.add(owner.uid)
        if needs_key(spec, owner, status) or self._key_deleted(spec, owner, status):
            snapshot = replace(snapshot, **self._generated_key(owner))
        decided = plan(snapshot, self.settings)
        try:
            made = self._execute(owner, decided)
            if role_made_now and "Role" in made:
                with self._rules_lock:
                    self._rules_checked.add(owner.uid)
                decided = replace(decided, status={**decided.status, "trainerRulesHash": trainer_rules_hash(owner)})
        except PermanentError as error:
            RECONCILE_ERRORS.labels("permanent").inc()
            code = NameTaken.code if isinstance(error, NameTaken) else "ConfigInvalid"
            failed = {"phase": "Failed", "error": {"code": code, "message": str(error)[:4096]}}
            decided = replace(decided, status={**decided.status, **failed})
        held = self._write_status(view.body, decided.status, owner, decided)
        if held is not None and (decided.requeue_after is None or held < decided.requeue_after):
            return held
        return decided.requeue_after

    def _trainer_rules(self, owner: Owner) -> str | None:
        """Bring the job's trainer Role to the current rules (builders.rbac.trainer_rules) when an older operator
        made it with others (finetunejobs/status patch, before issue #24): the hash to record in status, once
        checked; None when the Role under that name is not this job's (left alone; its runs fail NameTaken)."""
        names = Names.of(owner.name)
        role = self.kube.get("rbac.authorization.k8s.io/v1", "Role", owner.namespace, names.trainer_account)
        if role is not None and not controlled_by(role, owner.namespace, owner.uid):
            return None
        if outdated_role(role, owner):
            self.kube.replace_owned(trainer_role(owner))
            log.info("trainer Role %s/%s put back to the current rules", owner.namespace, names.trainer_account)
        return trainer_rules_hash(owner)

    def _key_deleted(self, spec: FineTuneJobSpec, owner: Owner, status: dict[str, Any]) -> bool:
        """Whether the generated key recorded in status has lost its Secret (deleted to get a new key): checked,
        as metadata, only while a model is published (the pods need it) and where the operator may look Secrets
        up (not clusterWide)."""
        if not self.settings.secret_check or not status.get("published") or recorded_key(spec, owner, status) is None:
            return False
        return not self.kube.exists_metadata("v1", "Secret", owner.namespace, Names.of(owner.name).api_key)

    def _generated_key(self, owner: Owner) -> dict[str, Any]:
        """Make the endpoint's key Secret once (builders.apikey), or find the one made before whose record the
        status lost (its hash is in its metadata); the key itself is never logged, never read back. A Secret of
        that name that is not ours is left alone and named in the status."""
        name = Names.of(owner.name).api_key
        key = generate_key()
        manifest = key_secret(metadata(owner, name, KEY_COMPONENT), key)
        try:
            created = self.kube.create(manifest)
        except NameTaken as error:
            return {"api_key_problem": f"the API key cannot be generated: {error}"}
        if created is not None:
            log.info("generated the API key Secret %s/%s", owner.namespace, name)
            return {"api_key": ApiKey(name, sha256_hex(key))}
        sha256 = recorded_sha256(self.kube.get_metadata("v1", "Secret", owner.namespace, name))
        if not sha256:
            problem = (
                f"Secret {owner.namespace}/{name} (the generated API key) lost its {ANNOTATION_KEY_SHA256} "
                "annotation; delete the Secret and the operator generates a new key"
            )
            return {"api_key_problem": problem}
        return {"api_key": ApiKey(name, sha256)}

    def _created_job(self, owner: Owner, manifest: Manifest, created: dict[str, Any] | None) -> None:
        # create() returned None only for a Job of ours (one controlled by another owner raises NameTaken)
        body = created or self.kube.get("batch/v1", "Job", owner.namespace, manifest["metadata"]["name"])
        if body:
            self.store.put_job(job_obs(body), only_if_absent=created is not None)

    def _execute(self, owner: Owner, decided: Plan) -> set[str]:
        """Carry the plan out; the kinds of the objects a Job needs that this pass created (not found made)."""
        for ref in decided.delete:
            deleted = self.kube.delete(
                ref.api_version,
                ref.kind,
                owner.namespace,
                ref.name,
                owner=owner.uid,
                uid=ref.uid,
                foreground=ref.foreground,
            )
            if deleted and ref.kind == "Job":
                log.info("%s Job %s/%s", "replacing" if ref.foreground else "retired", owner.namespace, ref.name)
            if ref.kind == "Job" and ref.foreground:
                self.store.mark_job_deleting(owner.namespace, owner.uid, ref.name)  # until the watch reports it gone
            elif ref.kind == "Job":
                self.store.forget_job(owner.namespace, owner.uid, ref.name)
            elif ref.kind == "Deployment":
                self.store.forget_deployment(owner.namespace, owner.uid)
        # What the Job needs (identity, config, headless Service) first and in parallel, then the Job: a Job
        # that exists implies the rest does, which is what lets a restarted operator trust an existing Job. The
        # data check's bare pod likewise comes last (its ServiceAccount must exist before it is admitted).
        needed = [m for m in decided.create if m["kind"] not in ("Job", "Pod")]
        results = self.pool.map(self.kube.create, needed)
        made = {m["kind"] for m, created in zip(needed, results, strict=True) if created is not None}
        for manifest in decided.create:
            if manifest["kind"] == "Job":
                self._created_job(owner, manifest, self.kube.create(manifest))
            elif manifest["kind"] == "Pod":
                created = self.kube.create(manifest)
                if created is not None:  # filed now: a pass before its watch event must not make it again
                    self.store.put_pod(pod_obs(created))
        for manifest in decided.apply:
            applied = self.kube.apply(manifest)
            if manifest["kind"] == "Deployment":
                self.store.put_deployment(deployment_obs(applied))
        if decided.suspend_job:
            name, suspend = decided.suspend_job
            self.kube.set_job_suspend(owner.namespace, name, suspend)
        return made

    def _write_status(
        self,
        body: dict[str, Any],
        new: dict[str, Any],
        owner: Owner | None = None,
        decided: Plan | None = None,
    ) -> float | None:
        """Patch the status from `old` to `new`; the seconds until a pass may write it, when only its conditions'
        wording changed and the last write was a moment ago (StatusPace), else None."""
        meta, old = body["metadata"], body.get("status") or {}
        patch = merge_patch(old, new)
        if patch and decided is not None and not decided.events and not decided.evicted:
            wait = self.pace.hold(meta["uid"], old, patch)
            if wait > 0:
                return wait
        if patch:
            patched = self.kube.patch_status(meta["namespace"], meta["name"], patch, meta["resourceVersion"])
            self.pace.wrote(meta["uid"])
            self.store.put_body(patched)
        JOBS_BY_PHASE.set(meta["namespace"], meta["name"], str(new.get("phase") or "Pending"))
        if owner is not None and decided is not None and old.get("phase") != new.get("phase"):
            PHASES.labels(str(new.get("phase"))).inc()
            log.info(
                "%s/%s run %s: %s -> %s",
                owner.namespace,
                owner.name,
                new.get("run"),
                old.get("phase"),
                new.get("phase"),
            )
        if owner is not None and decided is not None:
            # the plan emits an event only for news (a phase change, tracking newly degraded); best effort, off
            # the critical path
            for event in decided.events:
                self.events.submit(self.kube.post_event, owner, event.type, event.reason, event.message)
            for resource in decided.evicted:  # counted once: the status that records them is written
                NODE_PRESSURE_EVICTIONS.labels(resource).inc()
        return None
