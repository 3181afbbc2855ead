"""Plain shapes the pure planners return and the API module sends: a manifest, the owner of a child, an Event.

Why here, at the bottom: the builders, the three planners and the one module that talks to the API all speak
these; none of them should import another layer to name a manifest or an owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from finetune_operator import GROUP, KIND, VERSION

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The FineTuneJob that owns a child: its identity, needed for owner references and labels."""

    kind: ClassVar[str] = KIND  # another owning kind (a ModelServer) subclasses with its own

    namespace: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event a plan asks for (the loop posts it on the resource it planned for)."""

    type: str  # Normal | Warning
    reason: str
    message: str
