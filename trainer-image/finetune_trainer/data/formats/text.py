"""`text`: plain text to continue-pretrain on; every token (except BOS) is learned."""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.formats.base import Fields, Format


def normalize(fields: Fields) -> dict[str, Any]:
    return {"prompt": "", "completion": fields.text("text")}


FORMAT = Format(
    name="text",
    summary="text: one text column, learned in full (continued pre-training, domain adaptation)",
    kind="completion",
    task="causal-lm",
    fields=("text",),
    required=("text",),
    example={"text": "Orders ship within two business days. Express shipping arrives the next day."},
    normalize=normalize,
)
