"""A ModelServer's pass, pure: from what is observed (snapshot) to what should be (plan), and the verdict a
FineTuneJob naming the server reads back from its status.

Snapshot: the server's body, the FineTuneJobs naming it, and its pods, ConfigMaps and Deployment as the watches
last reported them. Plan: the objects to create or apply (the bundle when its hash moved, the desired adapter list
when it changed, the empty report when missing), the report keys of pods that are gone, the desired list, and the
status. Deciding here, apart from I/O, lets unit tests replay a server's life without a cluster; the FineTuneJob
side only reads the verdict back from the server's status (`verdict_for`) instead of deciding a second time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from finetune_operator.api import conditions as cond
from finetune_operator.api.base import invalid_spec_message
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH
from finetune_operator.api.modelserver import DesiredAdapter, ModelServerSpec, parse_server_spec
from finetune_operator.api.objects import Manifest
from finetune_operator.builders.modelserver import (
    ADAPTERS_KEY,
    ServerNames,
    ServerOwner,
    adapters_config_map,
    endpoint_url,
    loaded_config_map,
    server_bundle,
    server_key_secret,
)
from finetune_operator.builders.policy import REFUSED, server_refusal
from finetune_operator.core.errors import NameTaken
from finetune_operator.core.settings import Settings
from finetune_operator.modelserver.admission import Admission, admit, bounded_refusals, candidate_of
from finetune_operator.modelserver.observed import ServerChildren, ServerPodObs

CREATED_ONCE = ("ServiceAccount", "Role", "RoleBinding")
"""Fixed per server and created once: the operator may not patch them (it holds create only)."""

NAME_TAKEN_RETRY_SECONDS = 30.0
"""How soon a server whose names are taken tries again: the object in the way is someone else's, so no watch of
the server's objects reports its removal (the one timed requeue of the ModelServer loop)."""


@dataclass(frozen=True)
class Replica:
    """One server pod and what its sidecar reports loaded (name -> run)."""

    pod: str
    ready: bool
    loaded: dict[str, int]
    errors: dict[str, str]


def replica_of(pod: str, ready: bool, report: dict[str, Any] | None) -> Replica:
    """A replica from its pod's readiness and its sidecar's report (the shape `finetune_trainer adapters`
    writes: {"adapters": [{"name", "run", "uri"}], "errors": {name: message}})."""
    report = report or {}
    loaded = {str(a["name"]): int(a.get("run") or 0) for a in report.get("adapters") or [] if "name" in a}
    errors = {str(k): str(v) for k, v in (report.get("errors") or {}).items()}
    return Replica(pod, ready, loaded, errors)


def serving_run(name: str, replicas: Sequence[Replica]) -> int | None:
    """The run of adapter `name` every ready replica serves (None: some ready replica lacks it, or none is
    ready). The newest run is reported only once no ready replica would still answer with an older one."""
    ready = [r for r in replicas if r.ready]
    runs = {r.loaded.get(name) for r in ready}
    if not ready or None in runs or len(runs) != 1:
        return None
    (run,) = runs
    return run


def server_status(
    *,
    generation: int,
    endpoint: str,
    admission: Admission,
    replicas: Sequence[Replica],
    desired_replicas: int,
    max_adapters: int,
    conditions: list[dict[str, Any]],
    api_key_secret: str = "",
) -> dict[str, Any]:
    """The ModelServer's status (without lastTransitionTime bookkeeping, done by conditions.merge)."""
    return {
        "observedGeneration": generation,
        "replicas": desired_replicas,
        "readyReplicas": sum(1 for r in replicas if r.ready),
        "endpoint": endpoint,
        "apiKeySecret": api_key_secret,
        "adapterCount": len(admission.adapters),
        "capacityLeft": max(0, max_adapters - len(admission.adapters)),
        "adapters": [a.to_wire() for a in admission.adapters],
        **bounded_refusals(admission.refused),
        "loaded": [
            {
                "pod": r.pod,
                "ready": r.ready,
                "adapters": [f"{name}@{run}" for name, run in sorted(r.loaded.items())],
                **({"errors": dict(sorted(r.errors.items()))} if r.errors else {}),
            }
            for r in sorted(replicas, key=lambda r: r.pod)
        ],
        "conditions": conditions,
    }


def converged(admission: Admission, replicas: Sequence[Replica]) -> bool:
    """Every replica holds exactly the desired adapters at their desired runs."""
    want = {a.name: a.run for a in admission.adapters}
    return bool(replicas) and all(r.loaded == want for r in replicas)


@dataclass(frozen=True)
class SharedVerdict:
    """What the FineTuneJob side reads back from its server's status: admitted (with the run every ready
    replica serves), refused (why), or the server is missing."""

    reason: str  # Serving | Loading | a Refusal | ServerNotFound | Waiting
    message: str
    endpoint: dict[str, Any] | None = None


def verdict_for(
    job_namespace: str, job_name: str, run: int, server_key: tuple[str, str], server_body: dict[str, Any] | None
) -> SharedVerdict:
    """The FineTuneJob's place on its server, from the server's status (pure)."""
    namespace, name = server_key
    if server_body is None:
        return SharedVerdict("ServerNotFound", f"ModelServer {namespace}/{name} does not exist")
    status = server_body.get("status") or {}
    job = f"{job_namespace}/{job_name}"
    refused = next((r for r in status.get("refused") or [] if r.get("finetuneJob") == job), None)
    if refused:
        return SharedVerdict(str(refused["reason"]), str(refused.get("message", "")))
    entry = next((a for a in status.get("adapters") or [] if a.get("finetuneJob") == job), None)
    if entry is None:
        omitted = int(status.get("refusedOmitted") or 0)
        more = f" (it refuses {omitted} more FineTuneJobs than its status lists)" if omitted else ""
        return SharedVerdict("Waiting", f"waiting for ModelServer {namespace}/{name} to take run {run}{more}")
    replicas = [
        Replica(
            str(item.get("pod", "")),
            bool(item.get("ready")),
            {n: int(r) for n, _, r in (a.rpartition("@") for a in item.get("adapters") or [])},
            {},
        )
        for item in status.get("loaded") or []
    ]
    served = serving_run(str(entry["name"]), replicas)
    if served is None:
        return SharedVerdict("Loading", f"run {run} is loading on every replica of ModelServer {namespace}/{name}")
    url = str(status.get("endpoint") or "")
    endpoint = {"url": url, "model": str(entry["name"]), "run": served, "server": f"{namespace}/{name}"}
    if served != run:
        return SharedVerdict("Loading", f"run {run} is replacing run {served}", endpoint)
    return SharedVerdict("Serving", f"adapter {entry['name']} on ModelServer {namespace}/{name}", endpoint)


def _report(data: dict[str, str], pod: str) -> dict[str, Any] | None:
    try:
        parsed = json.loads(data[pod]) if pod in data else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def replicas_of(pods: Sequence[ServerPodObs], report: dict[str, str]) -> tuple[list[Replica], tuple[str, ...]]:
    """Every live server pod with what its sidecar reports, and the report keys of pods that are gone (or
    going), to drop."""
    live = [p for p in pods if not p.deleting]
    names = {p.name for p in live}
    stale = tuple(k for k in report if k not in names)
    return [replica_of(p.name, p.ready, _report(report, p.name)) for p in live], stale


@dataclass(frozen=True)
class ServerSnapshot:
    """Everything one pass decides from, as observed."""

    body: dict[str, Any]
    """The ModelServer."""
    jobs: tuple[dict[str, Any], ...]
    """The FineTuneJobs whose serving.server names it (candidates, or not)."""
    children: ServerChildren
    now: str


@dataclass(frozen=True)
class ServerPlan:
    """What one pass does: create, then apply, then delete, then drop reports; then write `status`."""

    status: dict[str, Any]
    create: tuple[Manifest, ...] = ()
    apply: tuple[Manifest, ...] = ()
    delete: tuple[tuple[str, str, str], ...] = ()
    """(apiVersion, kind, name) of objects that must go (the PDB of a server scaled to one replica)."""
    drop_reports: tuple[str, ...] = ()
    """Keys of the report ConfigMap written by pods that are gone."""
    desired: tuple[DesiredAdapter, ...] = ()
    desired_changed: bool = False
    requeue_after: float | None = None


def _bundle_writes(
    spec: ModelServerSpec, owner: ServerOwner, settings: Settings, children: ServerChildren
) -> tuple[tuple[Manifest, ...], tuple[Manifest, ...], tuple[tuple[str, str, str], ...]]:
    """The bundle's objects to create and to apply, and the PDB to delete, when its hash on the Deployment moved
    (nothing otherwise: the operator re-applies only what changed)."""
    bundle = server_bundle(spec, owner, settings)
    if children.deployment_hash == bundle[-1]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]:
        return (), (), ()
    create = tuple(m for m in bundle if m["kind"] in CREATED_ONCE)
    apply = tuple(m for m in bundle if m["kind"] not in CREATED_ONCE)
    # one replica: a PDB would block every node drain
    pdb = ("policy/v1", "PodDisruptionBudget", ServerNames.of(owner.name).deployment)
    return create, apply, (pdb,) if spec.replicas == 1 else ()


def _conditions(
    spec: ModelServerSpec, admission: Admission, replicas: Sequence[Replica], generation: int
) -> list[dict[str, Any]]:
    ready = sum(1 for r in replicas if r.ready)
    done = converged(admission, [r for r in replicas if r.ready]) and ready >= spec.replicas
    return [
        cond.condition(
            cond.READY,
            ready > 0,
            "Ready" if ready else "NoReplicaReady",
            f"{ready} of {spec.replicas} replicas ready",
            generation,
        ),
        cond.condition(
            "Converged",
            done,
            "Converged" if done else "Converging",
            f"every replica holds the {len(admission.adapters)} desired adapters"
            if done
            else "replicas are loading or unloading adapters",
            generation,
        ),
    ]


def plan(snapshot: ServerSnapshot, settings: Settings) -> ServerPlan:
    """One pass of one ModelServer. No requeue: every input arrives as a watch event (the server, the
    FineTuneJobs naming it, its pods, its report), and the periodic resync backs a lost one."""
    meta, old = snapshot.body["metadata"], snapshot.body.get("status") or {}
    generation = int(meta.get("generation") or 1)
    try:
        spec = parse_server_spec(snapshot.body.get("spec") or {})
    except ValidationError as error:
        invalid = cond.condition(cond.READY, False, "ConfigInvalid", invalid_spec_message(error), generation)
        return ServerPlan(status={"observedGeneration": generation, "conditions": [invalid]})
    refused = server_refusal(spec, settings)
    if refused is not None:  # nothing is applied; objects made before the policy changed stay as they are
        condition = cond.condition(cond.READY, False, REFUSED, refused, generation)
        return ServerPlan(status={"observedGeneration": generation, "conditions": [condition]})
    owner = ServerOwner(meta["namespace"], meta["name"], meta["uid"])
    names, children = ServerNames.of(owner.name), snapshot.children
    candidates = [c for c in (candidate_of(b) for b in snapshot.jobs) if c is not None]
    held = frozenset(str(a.get("name")) for a in old.get("adapters") or [])
    admission = admit(spec, owner.namespace, owner.name, candidates, held)
    create, apply, delete = _bundle_writes(spec, owner, settings, children)
    report = children.config_map(names.loaded)
    if report is None:
        create = (*create, loaded_config_map(owner))  # empty: each sidecar patches its own pod's key
    desired = adapters_config_map(owner, admission.adapters)
    current = children.config_map(names.adapters)
    changed = current is None or current.get(ADAPTERS_KEY) != desired["data"][ADAPTERS_KEY]
    replicas, stale = replicas_of(children.pods, report or {})
    status = server_status(
        generation=generation,
        endpoint=endpoint_url(owner),
        admission=admission,
        replicas=replicas,
        desired_replicas=spec.replicas,
        max_adapters=spec.max_adapters,
        conditions=cond.merge(old.get("conditions"), _conditions(spec, admission, replicas, generation), snapshot.now),
        api_key_secret=server_key_secret(spec, owner),
    )
    return ServerPlan(
        status=status,
        create=create,
        apply=(*apply, desired) if changed else apply,
        delete=delete,
        drop_reports=stale,
        desired=admission.adapters,
        desired_changed=changed,
    )


def key_to_generate(body: dict[str, Any]) -> str:
    """The name of the admin key Secret the operator must make before this pass applies anything ("" when the
    spec names one, opts out, does not parse, or the status records it made already). Made once: a Secret of
    that name already controlled by the server is kept as it is (the operator never reads or rewrites it)."""
    try:
        spec = parse_server_spec(body.get("spec") or {})
    except ValidationError:
        return ""
    meta = body["metadata"]
    name = server_key_secret(spec, ServerOwner(meta["namespace"], meta["name"], meta["uid"]))
    if not name or name == spec.api_key_secret or (body.get("status") or {}).get("apiKeySecret") == name:
        return ""
    return name


def name_taken(snapshot: ServerSnapshot, message: str) -> dict[str, Any]:
    """The status when an object under one of the server's names belongs to someone else (core.kube raised
    NameTaken): Ready=False, reason NameTaken, naming that object; nothing of it is taken over."""
    meta, old = snapshot.body["metadata"], snapshot.body.get("status") or {}
    generation = int(meta.get("generation") or 1)
    taken = cond.condition(cond.READY, False, NameTaken.code, message, generation)
    return {"observedGeneration": generation, "conditions": cond.merge(old.get("conditions"), [taken], snapshot.now)}
