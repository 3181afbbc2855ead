"""What the cluster admin lets a tenant's spec ask for, checked before any pod is rendered from it.

Why: the pods the operator makes run with what the spec says. An empty `storage.credentialsSecret` gives them the
node's own cloud identity (whatever it may read or write, every tenant could); a `priorityClassName` can preempt
other teams' pods; a toleration places pods on nodes kept for others. The admin's allow-lists (the chart's `policy`
values, Settings) decide; a spec outside them is refused with the field named, never silently trimmed.
Pure: specs and settings in, the refusal's message (or None) out.
"""

from __future__ import annotations

from collections.abc import Sequence

from finetune_operator.api.finetunejob import FineTuneJobSpec, StorageSpec, Toleration, hub_sources
from finetune_operator.api.modelserver import ModelServerSpec
from finetune_operator.core.settings import TOLERATION_FIELDS, AllowedToleration, Settings

REFUSED = "PolicyRefused"
"""The error code (FineTuneJob status.error.code) and condition reason (ModelServer) of a refusal."""


def _toleration_allowed(toleration: Toleration, allowed: Sequence[AllowedToleration]) -> bool:
    wanted = {f: getattr(toleration, f) for f in TOLERATION_FIELDS}
    return any(
        all(getattr(entry, f) is None or getattr(entry, f) == wanted[f] for f in TOLERATION_FIELDS) for entry in allowed
    )


def _shown(toleration: Toleration) -> str:
    fields = toleration.model_dump(mode="json", by_alias=True, exclude_none=True)
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def refusals(
    settings: Settings,
    *,
    storage: StorageSpec,
    storage_field: str,
    tolerations: Sequence[Toleration] = (),
    tolerations_field: str = "",
    priority_class: str = "",
    priority_class_field: str = "",
) -> list[str]:
    """One message per field the admin's policy does not allow, each naming the field (empty: allowed)."""
    out: list[str] = []
    if not storage.credentials_secret and not settings.allow_node_identity:
        out.append(
            f"{storage_field}.credentialsSecret is empty, which would give the pods the node's own storage identity; "
            "this cluster requires a credentials Secret (the chart's policy.allowNodeIdentity is false)"
        )
    classes = settings.allowed_priority_classes
    if priority_class and classes is not None and "*" not in classes and priority_class not in classes:
        allowed = ", ".join(classes) or "none"
        out.append(f"{priority_class_field} {priority_class!r} is not allowed here (allowed: {allowed})")
    if settings.allowed_tolerations is not None:
        for index, toleration in enumerate(tolerations):
            if not _toleration_allowed(toleration, settings.allowed_tolerations):
                out.append(
                    f"{tolerations_field}[{index}] {_shown(toleration)} is not allowed here "
                    "(the chart's policy.allowedTolerations)"
                )
    return out


def job_refusal(spec: FineTuneJobSpec, settings: Settings) -> str | None:
    """Why the admin's policy refuses this FineTuneJob (every field at once), or None."""
    found = refusals(
        settings,
        storage=spec.storage,
        storage_field="spec.storage",
        tolerations=spec.resources.tolerations,
        tolerations_field="spec.resources.tolerations",
        priority_class=spec.resources.priority_class_name,
        priority_class_field="spec.resources.priorityClassName",
    )
    if hub_sources(spec) and not settings.validation:
        fields = ", ".join(f"spec.{name}" for name in hub_sources(spec))
        found.append(
            f"{fields}: hf:// sources are resolved and copied by the Validating step, which this cluster turns off "
            "(the chart's validation.enabled is false); copy them into a bucket and give s3:// URIs"
        )
    return "; ".join(found) or None


def server_refusal(spec: ModelServerSpec, settings: Settings) -> str | None:
    """Why the admin's policy refuses this ModelServer, or None."""
    found = refusals(
        settings,
        storage=spec.storage,
        storage_field="spec.storage",
        tolerations=spec.tolerations,
        tolerations_field="spec.tolerations",
    )
    return "; ".join(found) or None
