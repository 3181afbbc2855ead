"""The base of every typed spec: camelCase aliases, unknown fields refused, immutable.

Why one base: the three kinds' specs must read the CRD's JSON the same way (a field the model does not know is
an error, never silently dropped), and `wire()` gives back the CRD's shape for hashes and the trainer config.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The camelCase JSON shape (as in the CRD and the trainer config), nulls included."""
        return self.model_dump(mode="json", by_alias=True)


def invalid_spec_message(error: Any) -> str:
    """One line naming every field a pydantic ValidationError refused: `spec.<path>: <why>; ...`."""
    return "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())


def without_unknown_fields(raw: dict[str, Any], error: Any) -> tuple[dict[str, Any], list[str]] | None:
    """`raw` (a spec) without the fields that `error` (a pydantic ValidationError of it) refused as unknown, and
    their `spec.<path>` names; None when the error refused anything else too (a wrong value is never dropped).

    Why: a CRD upgrade that adds a field with a default makes the API server show that field on every stored
    object when read (structural defaulting), before the operator that knows the field is running. For a
    generation this operator already accepted, the field is the new CRD's default, not something the user asked
    for, so the caller may read the spec without it (see finetunejob/controller.py); a new generation is still
    refused by name.
    """
    errors = error.errors()
    if not errors or any(e["type"] != "extra_forbidden" for e in errors):
        return None
    stripped = copy.deepcopy(raw)
    names = []
    for e in errors:
        *parents, last = e["loc"]
        node: Any = stripped
        for part in parents:
            node = node[part]
        del node[last]
        names.append("spec." + ".".join(str(p) for p in e["loc"]))
    return stripped, names
