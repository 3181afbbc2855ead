"""A kind's spec read as this operator accepted it, across a CRD upgrade that adds a defaulted field.

Why: the chart's upgrade applies the new CRDs first (helm installs crds/ before the templates); from then on the
API server shows each new defaulted field on every stored object when it is read (structural defaulting), and
until the new operator runs, this one would refuse them all, finished and running alike, as ConfigInvalid at
their next event. The user never asked for the field on a generation this operator already accepted (setting it
would have made a new generation), so that generation is read without it, and the fields read away are named in
one warning per object and generation. A new generation that carries a field this operator does not know is
still refused by name, as before: the operator cannot tell a default from a value the user set.

One home for the three kinds (FineTuneJob, FineTuneSweep, ModelServer): each passes its parser, how its status
says a generation was refused (`refused_before`), and, for the sweep, how to find the unknown fields of its
template (api.finetunesweep.sweep_without_unknown_fields). The warnings' memory is one generation per uid,
dropped when the object is deleted and at each resync for the uids the kind's memory no longer holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from finetune_operator.api.base import without_unknown_fields

log = logging.getLogger(__name__)

T = TypeVar("T")
# (raw spec, the parser's refusal) -> (the spec without the unknown fields, their spec.<path> names), or None when
# anything else was refused too
Strip = Callable[[dict[str, Any], ValidationError], "tuple[dict[str, Any], list[str]] | None"]


class AcceptedSpecs(Generic[T]):
    """Parses a kind's spec, reading away a newer CRD's defaulted fields for a generation already accepted."""

    def __init__(self, kind: str, parse: Callable[[dict[str, Any]], T], strip: Strip = without_unknown_fields):
        self.kind, self._parse, self._strip = kind, parse, strip
        self._lock = threading.Lock()
        self._warned: dict[str, int] = {}  # uid -> the generation whose unknown fields were logged

    def read(self, body: dict[str, Any], *, refused_before: bool) -> tuple[T, dict[str, Any]]:
        """The parsed spec and the raw spec it was read from (without the fields read away, if any).

        Raises the parser's ValidationError when the spec is refused: a new generation (status.observedGeneration
        is not the object's generation), one whose status says it was refused before (`refused_before`), or one
        refused for anything besides unknown fields."""
        raw = body.get("spec") or {}
        try:
            return self._parse(raw), raw
        except ValidationError as error:
            meta, status = body.get("metadata") or {}, body.get("status") or {}
            generation = int(meta.get("generation") or 1)
            if refused_before or int(status.get("observedGeneration") or 0) != generation:
                raise
            found = self._strip(raw, error)
            if found is None:
                raise
            stripped, names = found
            try:
                spec = self._parse(stripped)
            except ValidationError:
                raise error from None
            self._warn(meta, generation, names)
            return spec, stripped

    def _warn(self, meta: dict[str, Any], generation: int, names: list[str]) -> None:
        uid = str(meta.get("uid", ""))
        with self._lock:
            first = self._warned.get(uid) != generation
            self._warned[uid] = generation
        if first:
            log.warning(
                "%s %s/%s: %s not known to this operator (a newer CRD's default); generation %d was accepted "
                "without it and is read as accepted: upgrade the operator",
                self.kind,
                meta.get("namespace"),
                meta.get("name"),
                ", ".join(sorted(names)),
                generation,
            )

    def forget(self, uid: str) -> None:
        """The object is deleted: its warning's memory goes with it."""
        with self._lock:
            self._warned.pop(uid, None)

    def prune(self, live: Callable[[str], bool]) -> int:
        """Drop the memory of uids `live` says the kind no longer holds (a deletion event that never came);
        how many went. Called at each resync, beside the kind's own store prune."""
        with self._lock:
            gone = [uid for uid in self._warned if not live(uid)]
            for uid in gone:
                del self._warned[uid]
            return len(gone)

    def size(self) -> int:
        """How many objects' warnings are remembered (for tests of the bound)."""
        with self._lock:
            return len(self._warned)
