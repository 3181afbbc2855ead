"""The deterministic train / validation / test split, and its audit copy.

Why seeded and written out: a retried pod, a resumed run and an auditor must all see exactly the same
records in each split. The split depends only on the records' order and `dataset.split.seed` (a
`random.Random(seed)` shuffle, stable across Python versions), and the trainer writes every split's
records to `run-N/split/<name>.jsonl` so the test set can be checked for leakage afterwards.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from finetune_trainer.data import Record
from finetune_trainer.errors import DatasetInvalid


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
) -> Splits:
    """Split `train` into train/validation/test unless explicit validation/test records are given.

    Raises DatasetInvalid when a split ends up empty (too few records for the fractions, or an empty
    explicit file); a validation split is optional (fraction 0 and no file), a test split is not.
    """
    if not train:
        raise DatasetInvalid("dataset.train: empty split: the training data has no records")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_test = 0 if test is not None else _take(test_fraction, len(train))
    n_val = 0 if validation is not None else _take(validation_fraction, len(train))
    test_part = list(test) if test is not None else [train[i] for i in order[:n_test]]
    val_part = list(validation) if validation is not None else [train[i] for i in order[n_test : n_test + n_val]]
    taken = set(order[: n_test + n_val])
    train_part = [record for i, record in enumerate(train) if i not in taken]
    if not train_part:
        raise DatasetInvalid(
            f"dataset.train: empty split: {len(train)} record(s) leave none for training "
            f"after taking {n_test} for test and {n_val} for validation"
        )
    if not test_part:
        raise DatasetInvalid("dataset.test: empty split: the test data has no records")
    if validation is not None and not val_part:
        raise DatasetInvalid("dataset.validation: empty split: the validation data has no records")
    return Splits(train_part, val_part, test_part)


def to_jsonl(records: Sequence[Record]) -> bytes:
    """The records as JSON Lines, exactly as read (all columns), for `run-N/split/`."""
    return "".join(json.dumps(r.data, ensure_ascii=False, default=str) + "\n" for r in records).encode()
