"""The one table of dataset formats (`dataset.schema`), and choosing one when the spec leaves it out.

Why a table discovered from this package: every format is a module here defining `FORMAT`; the trainer's
config validation, the CRD enum (checked by tests/unit/trainer/test_formats.py), docs/datasets.md and the
format tests all read `FORMATS`, so adding a format is one module plus its tests (and the CRD enum the test
then asks for). `detect` looks at the first records: a format fits when every one of them has the format's
required fields; a fitting format whose required fields are a subset of another fitting one's gives way
(text+label records are classification, not text); two left is an error naming both.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.formats.base import Fields, Format, objective_mismatch
from finetune_trainer.data.readers import Record

DETECTION_SAMPLE = 20
"""How many leading records detection reads (the data file's head, as a person would look at it)."""


def _discover() -> dict[str, Format]:
    found: dict[str, Format] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module == "base":
            continue
        fmt = importlib.import_module(f"{__name__}.{module}").FORMAT
        if not isinstance(fmt, Format) or fmt.name in found:
            raise RuntimeError(f"finetune_trainer.data.formats.{module}: FORMAT must be a Format with a new name")
        found[fmt.name] = fmt
    return found


FORMATS: dict[str, Format] = _discover()
"""Every dataset format by its `dataset.schema` name."""


def get(name: str) -> Format:
    return FORMATS[name]


def unknown_columns(columns: Mapping[str, str], fmt: Format | None) -> list[str]:
    """Problems with `dataset.columns` keys: each must be a field of the format (of some format when None)."""
    problems = []
    for key in columns:
        if fmt is not None and key not in fmt.fields:
            fields = ", ".join(fmt.fields)
            problems.append(f"columns.{key}: schema {fmt.name!r} has no field {key!r} (its fields: {fields})")
        elif fmt is None and not any(key in f.fields for f in FORMATS.values()):
            known = sorted({name for f in FORMATS.values() for name in f.fields})
            problems.append(f"columns.{key}: no dataset schema has a field {key!r} (fields: {', '.join(known)})")
    return problems


@dataclass(frozen=True)
class Detection:
    """The format chosen for the data, and why (for the log, metrics.json and `validate`'s summary)."""

    format: Format
    detected: bool
    reason: str


def _fits(fmt: Format, sample: Sequence[Record], columns: Mapping[str, str]) -> bool:
    return all(Fields(r.data, r.origin, columns).has(f) for r in sample for f in fmt.required)


def detect(records: Sequence[Record], task: str, columns: Mapping[str, str], field: str = "dataset.train") -> Detection:
    """The format of `records` judged from the first `DETECTION_SAMPLE`; DatasetInvalid when none or several fit."""
    sample = list(records[:DETECTION_SAMPLE])
    candidates = [f for f in FORMATS.values() if f.task == task and all(key in f.fields for key in columns)]
    fitting = [f for f in candidates if _fits(f, sample, columns)]
    fitting = [f for f in fitting if not any(set(f.required) < set(o.required) for o in fitting)]
    first = sample[0] if sample else None
    seen = ", ".join(sorted(str(k) for k in first.data)) if first else "none"
    if len(fitting) == 1:
        fmt = fitting[0]
        have = ", ".join(columns.get(name, name) for name in fmt.required)
        reason = f"the first {len(sample)} record(s) of {field} all have {have}"
        return Detection(fmt, True, reason)
    origin = first.origin if first else field
    if not fitting:
        options = "; ".join(f"{f.name}: {', '.join(f.required)}" for f in candidates)
        raise DatasetInvalid(
            f"{origin}: cannot tell the dataset schema from the first {len(sample)} record(s) (fields: {seen}); "
            f"no schema's required fields are all there ({options}). Set dataset.schema, and dataset.columns "
            "when the data names its fields differently"
        )
    names = ", ".join(f.name for f in fitting)
    raise DatasetInvalid(
        f"{origin}: the records fit several dataset schemas ({names}; fields: {seen}); "
        "set dataset.schema to one of them"
    )


def resolve(
    records: Sequence[Record], declared: str | None, task: str, columns: Mapping[str, str], field: str = "dataset.train"
) -> Detection:
    """The declared format, or the detected one."""
    if declared is not None:
        return Detection(FORMATS[declared], False, "set in dataset.schema")
    return detect(records, task, columns, field)


def normalize(records: Sequence[Record], fmt: Format, columns: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every record as the format's normalised example; the first bad record raises DatasetInvalid."""
    return [fmt.normalize(Fields(r.data, r.origin, columns)) for r in records]


def ignored_columns(records: Sequence[Record], fmt: Format, columns: Mapping[str, str]) -> list[str]:
    """Columns present in the data that the format does not read (reported, so nothing is lost unseen)."""
    read = {columns.get(name, name) for name in fmt.fields}
    present = {str(key) for r in records for key, value in r.data.items() if value is not None}
    return sorted(present - read)


__all__ = [
    "FORMATS",
    "Detection",
    "Format",
    "detect",
    "get",
    "ignored_columns",
    "normalize",
    "objective_mismatch",
    "resolve",
]
