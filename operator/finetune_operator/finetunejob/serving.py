"""Serving of a FineTuneJob, pure: the run it publishes, and what its server needs this pass.

A run that trained and passed its gate becomes `status.published`; the job's own serving bundle (builders.serving)
is rendered from that published run, so a later run that fails its gate leaves it untouched, and the endpoint is
reported only once the Deployment has rolled out and is Available, and nothing is rolled out before the endpoint's
key exists (finetunejob.apikey: the user's Secret, or the generated one; open only with
serving.allowUnauthenticated). With `serving.server` the job has no Deployment
of its own: its place on the ModelServer is read back from the server's status (modelserver.plan.verdict_for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH, Names
from finetune_operator.api.modelserver import server_ref
from finetune_operator.api.objects import Manifest
from finetune_operator.api.published import Published
from finetune_operator.builders.serving import endpoint_url, serving_bundle
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.apikey import key_of
from finetune_operator.finetunejob.runs import ChildRef
from finetune_operator.finetunejob.snapshot import Snapshot
from finetune_operator.modelserver.plan import SharedVerdict, verdict_for


def published_of(spec: FineTuneJobSpec, run: int, cached_base: str | None = None) -> Published:
    """Run `run` as served. `cached_base`: the object-storage copy of an hf:// base model at the commit the run's
    check resolved (status.validation.sources), which the server loads (serving pods never reach the hub). A run
    that trained without a recorded check (an adopted Job) keeps the hf:// URI, which the server refuses by name."""
    base = cached_base if spec.base_model.from_hub and cached_base else spec.base_model.uri
    return Published(
        run=run,
        task=spec.base_model.task,
        base_model_uri=base,
        model_uri=spec.output.run_uri(run) + "model/",
        adapter=spec.method.produces_adapter,
        lora_rank=spec.method.lora.rank,
    )


@dataclass(frozen=True)
class ServingDecision:
    """What serving needs this pass: objects to apply and delete, the endpoint to report (None before the
    first rollout) and whether a replica is available now."""

    apply: list[Manifest] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    endpoint: dict[str, Any] | None = None
    available: bool = False
    shared: SharedVerdict | None = None  # serving.server: the verdict read from the ModelServer's status
    key_missing: str = ""  # why the bundle waits: its generated key's Secret is not made (never served open)


def _shared_serving(snapshot: Snapshot, published: Published | None, own: list[ChildRef]) -> ServingDecision:
    """serving.server: no Deployment of its own (one left from before is removed); the adapter's place on
    the server is read from the server's status, which decides it (sharing.admit). The endpoint stays
    reported while a newer run loads."""
    remove = own if snapshot.deployment is not None else []
    if published is None:
        return ServingDecision(delete=remove)
    owner = snapshot.owner
    key = server_ref(snapshot.spec.serving.server, owner.namespace)
    verdict = verdict_for(owner.namespace, owner.name, published.run, key, snapshot.server)
    previous = dict(snapshot.status.get("endpoint") or {}) or None
    endpoint = verdict.endpoint or (previous if verdict.reason == "Loading" else None)
    # its own key could not be made (someone else's Secret holds the name): said first, the server's KeyMissing after
    problem = snapshot.api_key_problem
    return ServingDecision([], remove, endpoint, verdict.endpoint is not None, verdict, key_missing=problem)


def serving_decision(snapshot: Snapshot, published: Published | None, settings: Settings) -> ServingDecision:
    """Apply or remove the serving bundle. An endpoint stays reported while its pods are down."""
    spec, owner, deployment = snapshot.spec, snapshot.owner, snapshot.deployment
    names = Names.of(owner.name)
    bundle_refs = [
        ChildRef("apps/v1", "Deployment", names.serving, uid=deployment.uid if deployment else ""),
        ChildRef("v1", "Service", names.serving),
        ChildRef("policy/v1", "PodDisruptionBudget", names.serving),
        ChildRef("v1", "ConfigMap", names.serving_config),
        ChildRef("networking.k8s.io/v1", "NetworkPolicy", names.serving),
    ]
    if spec.serving.enabled and spec.serving.server:
        return _shared_serving(snapshot, published, bundle_refs)
    if not spec.serving.enabled or published is None:
        remove = deployment is not None or bool(snapshot.status.get("endpoint"))
        return ServingDecision(delete=bundle_refs if remove else [])
    key = key_of(spec, owner, snapshot.status, snapshot.api_key)
    if key is None and not spec.serving.allow_unauthenticated:
        # the Deployment would read a Secret that is not there (or not ours): nothing is rolled out meanwhile
        why = snapshot.api_key_problem or f"waiting for the API key Secret {names.api_key}"
        previous = dict(snapshot.status.get("endpoint") or {}) or None
        return ServingDecision(endpoint=previous, key_missing=why)
    bundle = serving_bundle(spec, owner, published, settings, key.sha256 if key else "")
    desired_hash = bundle[-1]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    apply: list[Manifest] = []
    delete: list[ChildRef] = []
    if deployment is None or deployment.spec_hash != desired_hash:
        apply = bundle
        if spec.serving.replicas == 1 and deployment is not None:
            delete = [bundle_refs[2]]  # one replica: a PDB would block every node drain
    previous = dict(snapshot.status.get("endpoint") or {}) or None
    if deployment is None:
        return ServingDecision(apply, delete)
    if not deployment.available_condition or deployment.available < 1:
        return ServingDecision(apply, delete, previous, False)
    if deployment.current and deployment.spec_hash == desired_hash:
        endpoint = {"url": endpoint_url(owner), "model": owner.name, "run": deployment.run}
        return ServingDecision(apply, delete, endpoint, True)
    return ServingDecision(apply, delete, previous, True)
