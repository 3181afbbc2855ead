"""The base of every typed spec: camelCase aliases, unknown fields refused, immutable.

Why one base: the three kinds' specs must read the CRD's JSON the same way (a field the model does not know is
an error, never silently dropped), and `wire()` gives back the CRD's shape for hashes and the trainer config.
"""

from __future__ import annotations

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
