"""Shared serving, pure: which FineTuneJobs' adapters a server holds, and why the
others are refused.

Why pure and in one place: the server's desired adapter list is the one fact every replica converges to
(docs/serving.md, "Shared serving"); deciding it from typed inputs, apart from I/O, lets a unit table cover
every refusal and the ordering rule (adapters already held are never evicted by newcomers), and the
FineTuneJob side only reads the verdict back from the server's status instead of deciding a second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from finetune_operator.api.modelserver import DesiredAdapter, ModelServerSpec, adapter_name

Refusal = Literal[
    "NamespaceNotAllowed", "NotAnAdapter", "BaseModelMismatch", "TaskNotSupported", "RankTooHigh", "ServerFull"
]


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


@dataclass(frozen=True)
class Candidate:
    """A FineTuneJob that names this server and has a published run (status.published)."""

    namespace: str
    name: str
    created: str  # metadata.creationTimestamp: first come, first served when the server is full
    run: int
    model_uri: str
    base_model_uri: str
    adapter: bool
    task: str
    lora_rank: int

    @property
    def job(self) -> str:
        return f"{self.namespace}/{self.name}"


def own_model_uri(spec: dict[str, Any], run: int) -> str:
    """Where run `run` of a FineTuneJob puts its model: `<spec.output.uri>run-N/model/`, the one place its
    adapter may be fetched from."""
    output = str((spec.get("output") or {}).get("uri") or "")
    return f"{output if output.endswith('/') else output + '/'}run-{run}/model/"


def candidate_of(body: dict[str, Any]) -> Candidate | None:
    """The candidate a FineTuneJob body makes (None: nothing published, or serving disabled).

    The status is the operator's own record, but anyone allowed to write a FineTuneJob's status could have
    written it: a model URI other than the job's own `<output.uri>run-N/model/` is no candidate, so no status
    writer can make a shared server (and its credentials) fetch from another job's or tenant's folder."""
    spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body["metadata"]
    serving = spec.get("serving") or {}
    published = status.get("published") or {}
    if not serving.get("enabled") or not serving.get("server") or "run" not in published:
        return None
    try:
        run = int(published["run"])
    except (TypeError, ValueError):
        return None
    model_uri = str(published.get("modelUri", ""))
    if run < 1 or model_uri != own_model_uri(spec, run):
        return None
    return Candidate(
        namespace=meta["namespace"],
        name=meta["name"],
        created=str(meta.get("creationTimestamp") or ""),
        run=run,
        model_uri=model_uri,
        base_model_uri=str(published.get("baseModelUri", "")),
        adapter=bool(published.get("adapter", True)),
        task=str(published.get("task", "causal-lm")),
        lora_rank=int(published.get("loraRank", 16)),
    )


REFUSED_MAX = 50
"""At most this many refusals are listed in status.refused (the rest counted in status.refusedOmitted): any
tenant, in any namespace, may name a server, and an unbounded list would grow the ModelServer past the API
server's object size limit and stop its status updates. The server's own namespace and allowedNamespaces are
listed first, so its tenants learn why; a FineTuneJob beyond the list reads `Waiting` with the count."""


@dataclass(frozen=True)
class Refused:
    job: str
    reason: Refusal
    message: str

    def to_wire(self) -> dict[str, str]:
        return {"finetuneJob": self.job, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class Admission:
    adapters: tuple[DesiredAdapter, ...]
    refused: tuple[Refused, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.adapters)


def _refusal(spec: ModelServerSpec, server_namespace: str, server_name: str, c: Candidate) -> Refused | None:
    """Why candidate `c` cannot be served here at all (capacity aside), or None."""
    where = f"ModelServer {server_namespace}/{server_name}"
    if not spec.allows(c.namespace, server_namespace):
        return Refused(
            c.job,
            "NamespaceNotAllowed",
            f"{where} serves namespace {server_namespace} only; it must list {c.namespace} in allowedNamespaces",
        )
    if not c.adapter:
        return Refused(
            c.job,
            "NotAnAdapter",
            f"run {c.run} produced full or merged weights (method.type full or mergeWeights): a shared server "
            "holds LoRA adapters of its base model only; the model stays at " + c.model_uri,
        )
    if c.task != "causal-lm":
        return Refused(c.job, "TaskNotSupported", f"{where} serves causal-lm adapters; run {c.run} is {c.task}")
    if not _same_uri(c.base_model_uri, spec.base_model_uri):
        return Refused(
            c.job,
            "BaseModelMismatch",
            f"run {c.run} adapts {c.base_model_uri}, but {where} serves {spec.base_model_uri}",
        )
    if c.lora_rank > spec.max_lora_rank:
        return Refused(
            c.job,
            "RankTooHigh",
            f"run {c.run} has LoRA rank {c.lora_rank}; {where} accepts rank <= {spec.max_lora_rank} (maxLoraRank)",
        )
    return None


def admit(
    spec: ModelServerSpec,
    server_namespace: str,
    server_name: str,
    candidates: Sequence[Candidate],
    held: frozenset[str] = frozenset(),
) -> Admission:
    """The server's desired adapters and the refusals, from every FineTuneJob that names it.

    `held`: the adapter names of the previous desired list. They keep their places when the server is full
    (a running fine-tune is never evicted by a newcomer); newcomers are admitted oldest FineTuneJob first.
    """
    refused: list[Refused] = []
    eligible: list[Candidate] = []
    for c in candidates:
        why = _refusal(spec, server_namespace, server_name, c)
        if why is None:
            eligible.append(c)
        else:
            refused.append(why)
    named = [(adapter_name(c.namespace, c.name, server_namespace), c) for c in eligible]
    named.sort(key=lambda pair: (pair[0] not in held, pair[1].created, pair[1].job))
    adapters: list[DesiredAdapter] = []
    for name, c in named:
        if len(adapters) < spec.max_adapters:
            adapters.append(DesiredAdapter(name, c.job, c.run, c.model_uri, c.lora_rank))
        else:
            refused.append(
                Refused(
                    c.job,
                    "ServerFull",
                    f"ModelServer {server_namespace}/{server_name} holds its maximum of {spec.max_adapters} "
                    "adapters (maxAdapters); it is admitted when one leaves",
                )
            )
    adapters.sort(key=lambda a: a.name)
    refused.sort(key=lambda r: r.job)
    return Admission(tuple(adapters), tuple(refused))


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
) -> dict[str, Any]:
    """The ModelServer's status (without lastTransitionTime bookkeeping, done by conditions.merge)."""
    return {
        "observedGeneration": generation,
        "replicas": desired_replicas,
        "readyReplicas": sum(1 for r in replicas if r.ready),
        "endpoint": endpoint,
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


def bounded_refusals(refused: Sequence[Refused], limit: int = REFUSED_MAX) -> dict[str, Any]:
    """status.refused with at most `limit` entries, the tenants the server allows first (a NamespaceNotAllowed
    refusal is about a stranger), and status.refusedOmitted: how many more there are (0: none)."""
    ordered = sorted(refused, key=lambda r: (r.reason == "NamespaceNotAllowed", r.job))
    return {"refused": [r.to_wire() for r in ordered[:limit]], "refusedOmitted": max(0, len(ordered) - limit)}


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
