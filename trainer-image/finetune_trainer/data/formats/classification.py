"""`classification`: text and a label, for `baseModel.task: sequence-classification`.

Labels are strings or integers; ids are assigned by `finetune_trainer.data.labels.label_names`.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.formats.base import Fields, Format


def normalize(fields: Fields) -> dict[str, Any]:
    label = fields.raw("label")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
        raise fields.fail(
            f"field {fields.column('label')!r} must be a non-empty string or an integer label, got {label!r}"
        )
    return {"text": fields.text("text"), "label": str(label)}


FORMAT = Format(
    name="classification",
    summary="classification: text and label columns (baseModel.task sequence-classification)",
    kind="classification",
    task="sequence-classification",
    fields=("text", "label"),
    required=("text", "label"),
    example={"text": "The parcel arrived broken and nobody answers my emails.", "label": "complaint"},
    normalize=normalize,
)
