"""status.published of a FineTuneJob: the run its server serves (one that trained and passed its gate).

Why in api/: it is a piece of the FineTuneJob's status, read back by the FineTuneJob's plan and rendered by the
engines (builders.engines) into the server that serves it; neither should own the other's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Published:
    """The model a serving Deployment runs: one run that passed its gate (kept in status.published)."""

    run: int
    task: str
    base_model_uri: str
    model_uri: str
    adapter: bool
    lora_rank: int = 16

    @classmethod
    def from_status(cls, raw: dict[str, Any] | None) -> Published | None:
        if not raw or "run" not in raw:
            return None
        return cls(
            run=int(raw["run"]),
            task=str(raw.get("task", "causal-lm")),
            base_model_uri=str(raw.get("baseModelUri", "")),
            model_uri=str(raw.get("modelUri", "")),
            adapter=bool(raw.get("adapter", True)),
            lora_rank=int(raw.get("loraRank", 16)),
        )

    def to_status(self) -> dict[str, Any]:
        """status.published: the API's camelCase names."""
        return {
            "run": self.run,
            "task": self.task,
            "baseModelUri": self.base_model_uri,
            "modelUri": self.model_uri,
            "adapter": self.adapter,
            "loraRank": self.lora_rank,
        }
