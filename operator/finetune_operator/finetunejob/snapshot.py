"""What one FineTuneJob pass knows: the typed spec, the status, compact observations of its children, the
ModelServer it names and the trainer's progress report. The pure deciders (plan.py, serving.py, status.py) all read
this one value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.objects import Owner
from finetune_operator.core.observed import DeploymentObs, JobObs, PodObs
from finetune_operator.finetunejob.apikey import ApiKey


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Everything one reconcile knows about one FineTuneJob (keywords only: ten fields read badly by position)."""

    owner: Owner
    generation: int
    spec: FineTuneJobSpec
    status: dict[str, Any]
    jobs: Sequence[JobObs] = ()
    pods: Sequence[PodObs] = ()
    deployment: DeploymentObs | None = None
    secret_present: bool | None = None  # None: no secret named, or not checked
    absent_secrets: tuple[str, ...] = ()  # which of the checked Secrets are absent (empty: the storage one)
    now: str = ""
    retry_token: str = ""  # the FineTuneJob's finetune.dev/retry annotation
    server: dict[str, Any] | None = None  # the ModelServer serving.server names (its body), when it exists
    progress: dict[str, Any] | None = None  # the trainer's report, read and validated this pass (None: not read)
    api_key: ApiKey | None = None  # the generated key made or found this pass (None: not needed, or not made)
    api_key_problem: str = ""  # why the generated key could not be made (its name holds someone else's Secret)
    trainer_rules: str | None = None  # the trainer rules' hash, once this pass checked (or put back) the Role
