"""status.published of a FineTuneJob: the run its server serves (one that trained and passed its gate).

Why in api/: it is a piece of the FineTuneJob's status, derived by the FineTuneJob's plan and rendered by the
engines (builders.engines) into the server that serves it; neither should own the other's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Published:
    """The model a serving Deployment runs: one run that passed its gate (shown in status.published, which the
    planner derives on every pass: finetunejob/plan.py)."""

    run: int
    task: str
    base_model_uri: str
    model_uri: str
    adapter: bool
    lora_rank: int = 16

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
