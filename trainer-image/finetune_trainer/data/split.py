"""The deterministic train / validation / test split, keeping evaluation data out of training, and its audit.

Why seeded and written out: a retried pod, a resumed run and an auditor must all see exactly the same
records in each split. The split depends only on the records' order, their content and
`dataset.split.seed` (a `random.Random(seed)` shuffle, stable across Python versions; copies of a record
stay together), and the trainer writes every split's records to `run-N/split/<name>.jsonl` so the test
set can be checked for leakage afterwards.

Evaluation data never trains: explicit validation/test files are taken out of the train listing even when
the train URI is a folder or key prefix that holds them (`train: data/`, `test: data/test-00000-of-00001.parquet`),
and records that appear in train and in a held-out split by content are counted (reported in metrics.json
and by `validate`); above `OVERLAP_LIMIT` of a held-out split the run fails.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.readers import DataFile, Record

OVERLAP_LIMIT = 0.10
"""The share of a held-out split that may also be in train (by content) before the run fails.

A few duplicates are common in real data (the same greeting, the same FAQ asked twice) and are reported;
beyond a tenth, the held-out metrics would mostly measure memorisation, so the run stops as a user error.
"""


@dataclass(frozen=True)
class Splits:
    train: list[Record]
    validation: list[Record]
    test: list[Record]

    def items(self) -> list[tuple[str, list[Record]]]:
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]


def _take(fraction: float, total: int) -> int:
    """How many records a fraction takes: at least one when the fraction is non-zero."""
    return 0 if fraction <= 0 else max(1, round(total * fraction))


def split_records(
    train: Sequence[Record],
    validation: Sequence[Record] | None,
    test: Sequence[Record] | None,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    keys: Sequence[str] | None = None,
) -> Splits:
    """Split `train` into train/validation/test unless explicit validation/test records are given.

    Copies of one record (the same `keys[i]`, its content hash; default: all its columns) go to the same
    split, so a duplicate in the data cannot put a test record into training. For data without copies the
    split is a plain seeded shuffle. Raises DatasetInvalid when a split ends up empty (too few records for
    the fractions, or an empty explicit file); a validation split is optional, a test split is not.
    """
    if not train:
        raise DatasetInvalid("dataset.train: empty split: the training data has no records")
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(train):
        groups.setdefault(keys[index] if keys is not None else content_hash(record.data), []).append(index)
    members = list(groups.values())
    order = list(range(len(members)))
    random.Random(seed).shuffle(order)
    n_test = 0 if test is not None else _take(test_fraction, len(train))
    n_val = 0 if validation is not None else _take(validation_fraction, len(train))
    test_ids: list[int] = []
    val_ids: list[int] = []
    for group in order:
        if len(test_ids) < n_test:
            test_ids += members[group]
        elif len(val_ids) < n_val:
            val_ids += members[group]
        else:
            break
    test_part = list(test) if test is not None else [train[i] for i in test_ids]
    val_part = list(validation) if validation is not None else [train[i] for i in val_ids]
    taken = set(test_ids) | set(val_ids)
    train_part = [record for i, record in enumerate(train) if i not in taken]
    if not train_part:
        raise DatasetInvalid(
            f"dataset.train: empty split: {len(train)} record(s) leave none for training "
            f"after taking {len(test_ids)} for test and {len(val_ids)} for validation"
        )
    if not test_part:
        raise DatasetInvalid("dataset.test: empty split: the test data has no records")
    if validation is not None and not val_part:
        raise DatasetInvalid("dataset.validation: empty split: the validation data has no records")
    return Splits(train_part, val_part, test_part)


def to_jsonl(records: Sequence[Record]) -> bytes:
    """The records as JSON Lines, exactly as read (all columns), for `run-N/split/`."""
    return "".join(json.dumps(r.data, ensure_ascii=False, default=str) + "\n" for r in records).encode()


def exclude_held_out(
    train: Sequence[DataFile], held_out: Mapping[str, Sequence[DataFile]]
) -> tuple[list[DataFile], list[str]]:
    """`train` without the files that an explicit validation/test URI names; and the URIs taken out."""
    held = {f.obj.uri for files in held_out.values() for f in files}
    return [f for f in train if f.obj.uri not in held], [str(f.obj.uri) for f in train if f.obj.uri in held]


def content_hash(example: Mapping[str, Any]) -> str:
    """A record's identity for leakage checks: its normalised content (not its file, line or extra columns)."""
    return hashlib.sha256(json.dumps(example, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def overlap(examples: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """For validation and test: how many of their records also appear in train."""
    train = {content_hash(e) for e in examples.get("train", [])}
    return {name: sum(1 for e in examples.get(name, []) if content_hash(e) in train) for name in ("validation", "test")}


def check_overlap(counts: Mapping[str, int], sizes: Mapping[str, int]) -> None:
    """Fail when more than `OVERLAP_LIMIT` of a held-out split is also in train."""
    for name in ("test", "validation"):
        total, shared = sizes.get(name, 0), counts.get(name, 0)
        if total and shared / total > OVERLAP_LIMIT:
            raise DatasetInvalid(
                f"dataset.{name}: {shared} of its {total} record(s) are also in the training data "
                f"(by content; more than {OVERLAP_LIMIT:.0%}), so its metrics would measure memorisation; "
                f"remove them from dataset.train, or point dataset.{name} at records that are not trained on"
            )
