"""A FineTuneJob endpoint's API key, pure: which Secret the server reads it from, and whether the operator must
make one this pass.

Why: an endpoint without a key exists only when the manifest says `serving.allowUnauthenticated: true`. With
`serving.apiKeySecret` the user's Secret is read by the server pods; otherwise the operator generates a key once
(builders.apikey) into the Secret `<name>-api-key`, and records which Secret and the key's SHA-256 in
`status.serving`, so that the user finds the key (`kubectl get secret`) and a shared ModelServer admits it for
this job's adapter (the desired list's `keySha256`) without the operator ever reading a Secret's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.labels import Names
from finetune_operator.api.objects import Owner
from finetune_operator.builders.apikey import is_sha256


@dataclass(frozen=True)
class ApiKey:
    """Where an endpoint's key is: the Secret (key apiKey) and, for a generated key, its hex SHA-256."""

    secret: str
    sha256: str = ""

    def to_status(self) -> dict[str, str]:
        return {"apiKeySecret": self.secret, **({"apiKeySha256": self.sha256} if self.sha256 else {})}


def recorded_key(spec: FineTuneJobSpec, owner: Owner, status: dict[str, Any]) -> ApiKey | None:
    """The generated key an earlier pass recorded in status.serving (its Secret's name and a well-formed hash),
    or None. Only the operator writes the status; a record naming another Secret is ignored."""
    if not spec.serving.generates_key:
        return None
    serving = status.get("serving") or {}
    name = Names.of(owner.name).api_key
    if not isinstance(serving, dict) or serving.get("apiKeySecret") != name:
        return None
    if not is_sha256(serving.get("apiKeySha256")):
        return None
    return ApiKey(name, str(serving["apiKeySha256"]))


def needs_key(spec: FineTuneJobSpec, owner: Owner, status: dict[str, Any]) -> bool:
    """Whether this pass must make (or find again) the generated key: serving wants one and status has none."""
    return spec.serving.generates_key and recorded_key(spec, owner, status) is None


def key_of(spec: FineTuneJobSpec, owner: Owner, status: dict[str, Any], made: ApiKey | None) -> ApiKey | None:
    """The endpoint's key this pass: the user's Secret, the generated one (made this pass or recorded), or None
    (open by the manifest's choice, or a generated key not made yet)."""
    if spec.serving.api_key_secret:
        return ApiKey(spec.serving.api_key_secret)
    if spec.serving.allow_unauthenticated:
        return None
    return made or recorded_key(spec, owner, status)
