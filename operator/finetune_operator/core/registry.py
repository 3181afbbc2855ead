"""The controller registry: what each kind's loop is, as the kopf glue (handlers.py) sees it.

Each kind registers one `Controller`: the resource it reconciles, how its loop is built at startup, how its memory
is primed before the first pass (an informer's initial list), which keys it has (for the periodic resync), and
the `Watch`es whose events fill its memory and queue its keys: its own resource, its children (streamed by the label
that names their owner's uid, filed by their controller ownerReference: api.ownership), and other kinds it follows
(a ModelServer follows the FineTuneJobs naming it), and how its memory drops what names no live owner (`prune`, at
each resync). The glue loops over the registry: one kopf handler per watched resource, one work queue per kind.
Adding a kind is one `Controller` in its own package and one line in handlers.CONTROLLERS.

Why the selectors are merged here: the API server takes one label selector per watched resource, and it ANDs
its terms, so two kinds following one resource (FineTuneJob training pods, ModelServer replicas) cannot each add
their own. The merged selector streams only objects of the operator's components; each watch then takes the
objects that carry its owner label and component.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from finetune_operator.api.labels import LABEL_COMPONENT
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Key, Store

Loop = TypeVar("Loop")


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass(frozen=True)
class Watch(Generic[Loop]):
    """Objects one kind follows, and what becomes of their events.

    `observe(loop, event_type, body)` files the event in the loop's memory and returns the keys of the kind to
    queue. With `owner_label`, only objects carrying that label reach it (children, filed by their owner's uid),
    and only those of `components` (values of finetune.dev/component) when given; the API server then streams
    only such objects (`selectors`).
    """

    resource: Resource
    observe: Callable[[Loop, str, dict[str, Any]], Iterable[Key]]
    owner_label: str = ""
    components: tuple[str, ...] = ()
    urgent: bool = False

    @property
    def selector(self) -> str:
        """This watch's own label selector (what priming lists); "" for a whole resource."""
        if not self.owner_label:
            return ""
        components = f",{LABEL_COMPONENT} in ({','.join(self.components)})" if self.components else ""
        return f"{self.owner_label}{components}"

    def takes(self, body: dict[str, Any]) -> bool:
        if not self.owner_label:
            return True
        labels = (body.get("metadata") or {}).get("labels") or {}
        if self.owner_label not in labels:
            return False
        return not self.components or labels.get(LABEL_COMPONENT) in self.components


@dataclass(frozen=True)
class Controller(Generic[Loop]):
    """One kind's control loop as registered.

    `build(kube, store, settings)` makes the loop at startup (`kube`: the API client, core.kube.Kube, typed
    loosely so that registering a kind does not import the client into its package; `store`: the memory shared
    between kinds); `reconcile(loop, key)` is one pass, returning seconds until the next one is needed (None:
    wait for events); `keys(loop)` are what the periodic resync queues; `concurrency(settings)` is how many
    passes of this kind run at once. Its memory is primed before any pass by listing each child watch's
    objects (`Watch.selector`) through the watch's own `observe`, as an informer's initial list does.
    `prune(loop)`, at each resync before the keys are queued, drops from the kind's memory the children that name
    no live owner (api.ownership: a forged uid, an event that came after its owner's deletion), so memory stays
    bounded by the live objects; it returns how many groups went.
    """

    kind: str
    resource: Resource
    build: Callable[[Any, Store, Settings], Loop]
    reconcile: Callable[[Loop, Key], float | None]
    watches: tuple[Watch[Loop], ...]
    keys: Callable[[Loop], Iterable[Key]]
    concurrency: Callable[[Settings], int]
    prune: Callable[[Loop], int] | None = None

    def children(self) -> tuple[Watch[Loop], ...]:
        """The watches of objects filed by their owner's uid: what priming lists."""
        return tuple(w for w in self.watches if w.owner_label)


DELETED = "DELETED"
JOBS = Resource("batch", "v1", "jobs", "Job")
PODS = Resource("", "v1", "pods", "Pod")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
REPLICA_SETS = Resource("apps", "v1", "replicasets", "ReplicaSet")


def resources(controllers: Sequence[Controller[Any]]) -> list[Resource]:
    """Every resource some kind watches, each once, in registration order."""
    seen: dict[Resource, None] = {}
    for controller in controllers:
        for watch in controller.watches:
            seen.setdefault(watch.resource, None)
    return list(seen)


def selectors(controllers: Sequence[Controller[Any]]) -> dict[Resource, str]:
    """The server-side label selector of each watched child resource (none for a resource some kind watches
    whole, like its own kind). One watch: its owner label and components. Several: the union of their
    components (every such watch must name some)."""
    by_resource: dict[Resource, list[Watch[Any]]] = {}
    for controller in controllers:
        for watch in controller.watches:
            by_resource.setdefault(watch.resource, []).append(watch)
    out: dict[Resource, str] = {}
    for resource, watches in by_resource.items():
        if any(not w.owner_label for w in watches):
            continue
        if len(watches) == 1:
            out[resource] = watches[0].selector
            continue
        if any(not w.components for w in watches):
            raise ValueError(f"{resource.plural}: watched by several kinds, each must name its components")
        union = sorted({c for w in watches for c in w.components})
        out[resource] = f"{LABEL_COMPONENT} in ({','.join(union)})"
    return out
