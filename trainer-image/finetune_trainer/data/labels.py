"""Classification labels: names to ids, with precise errors.

Why here and not in the `classification` format: a format judges one record at a time, while the label
set is a property of the whole train split. Labels are mapped to ids once (sorted, or in the order the
user listed them) and the mapping is recorded with the model, so the server and the report agree with
training; a label outside the known set says which label, which line and which labels are known.
(Reading a record into a schema's fields is `finetune_trainer.data.formats`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid


def label_names(train_labels: Sequence[str], configured: Sequence[str] | None, num_labels: int | None) -> list[str]:
    """The id -> name list: the configured labels in order, else the distinct train labels sorted.

    Integer-like labels sort numerically, so labels 0..9 keep their ids.
    """
    if configured:
        return list(configured)
    distinct = set(train_labels)
    numeric = all(label.lstrip("-").isdigit() for label in distinct)
    names = sorted(distinct, key=int) if numeric else sorted(distinct)
    if num_labels is not None and len(names) != num_labels:
        raise DatasetInvalid(
            f"dataset.train has {len(names)} distinct label(s) ({', '.join(names[:20])}) "
            f"but baseModel.numLabels is {num_labels}"
        )
    if len(names) < 2:
        raise DatasetInvalid(f"dataset.train has {len(names)} distinct label(s); a classifier needs at least 2")
    return names


def encode_labels(examples: Sequence[dict[str, Any]], origins: Sequence[str], names: Sequence[str]) -> list[int]:
    """The label id of each example; a label outside `names` is a user error naming its line."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for example, origin in zip(examples, origins, strict=True):
        label = example["label"]
        if label not in index:
            known = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise DatasetInvalid(f"{origin}: unknown label {label!r} (known labels: {known})")
        ids.append(index[label])
    return ids
