"""The deterministic train / validation / test split, keeping evaluation data out of training, and its audit.

The small-split rule: a held-out split taken from train by `dataset.split.<name>` gets round(n x fraction)
records, and at least one when the fraction is above 0 (3 records at 0.1/0.1 give 1 / 1 / 1); copies of a
record are kept together, so a split can get a few more. The rule as applied is in `Splits.rule` (reported in
`run-N/split/dataset.json`, metrics.json and status.validation as `splitRule`). A split that leaves fewer than
`MIN_TRAIN_RECORDS` records to train on is a user error naming the counts.

Why seeded and written out: a retried pod, a resumed run and an auditor must all see exactly the same
records in each split. The split depends only on the records' order, their content and
`dataset.split.seed` (a `random.Random(seed)` shuffle, stable across Python versions; copies of a record
stay together), and the trainer writes every split's records to `run-N/split/<name>.jsonl` so the test
set can be checked for leakage afterwards.

Evaluation data never trains: explicit validation/test files are taken out of the train listing even when
the train URI is a folder or key prefix that holds them (`train: data/`, `test: data/test-00000-of-00001.parquet`),
and records that appear in train and in a held-out split by content are counted (reported in metrics.json
and by `validate`), and so are near-copies (`near_duplicates`); above `OVERLAP_LIMIT` of a held-out split, the
two together, the run fails.
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


MIN_TRAIN_RECORDS = 8
"""The fewest training records a run accepts: one batch at the default batchSize. Fewer make a run of a step or
two on a handful of examples whose loss and test metrics say nothing, which is a mistake (too small a file, too
large a held-out fraction) rather than a fine-tune."""


@dataclass(frozen=True)
class Splits:
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    rule: str = ""
    """How the held-out splits taken from train were sized (empty when none was)."""

    def items(self) -> list[tuple[str, list[Record]]]:
        """The three splits with their names (not the rule)."""
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]


def _take(fraction: float, total: int) -> int:
    """How many records a fraction takes: round(total x fraction), at least one when the fraction is non-zero."""
    return 0 if fraction <= 0 else max(1, round(total * fraction))


def _rule(name: str, fraction: float, total: int, wanted: int, taken: int) -> str:
    """One split's sizing, as reported: `test 0.1 of 3 = 0.3 -> 1 (at least 1)`."""
    text = f"{name} {fraction:g} of {total} = {total * fraction:g} -> {wanted}"
    if wanted and round(total * fraction) < 1:
        text += " (at least 1)"
    if taken != wanted:
        text += f", {taken} with the copies of its records"
    return text


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
    the fractions, or an empty explicit file) or fewer than `MIN_TRAIN_RECORDS` are left to train on; a
    validation split is optional, a test split is not.
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
    parts = []
    if validation is None and validation_fraction > 0:
        parts.append(_rule("validation", validation_fraction, len(train), n_val, len(val_ids)))
    if test is None and test_fraction > 0:
        parts.append(_rule("test", test_fraction, len(train), n_test, len(test_ids)))
    rule = "; ".join(parts) + f"; train keeps {len(train_part)}" if parts else ""
    if not train_part:
        raise DatasetInvalid(
            f"dataset.train: empty split: {len(train)} record(s) leave none for training "
            f"after taking {len(test_ids)} for test and {len(val_ids)} for validation ({rule})"
        )
    if not test_part:
        raise DatasetInvalid("dataset.test: empty split: the test data has no records")
    if validation is not None and not val_part:
        raise DatasetInvalid("dataset.validation: empty split: the validation data has no records")
    if len(train_part) < MIN_TRAIN_RECORDS:
        how = f" ({rule})" if rule else ""
        raise DatasetInvalid(
            f"dataset.train: {len(train_part)} record(s) to train on{how}; a run needs at least "
            f"{MIN_TRAIN_RECORDS}. Add training records"
            + (", or lower dataset.split.validation/test or give dataset.validation/test as files" if rule else "")
        )
    return Splits(train_part, val_part, test_part, rule)


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


def check_overlap(
    counts: Mapping[str, int],
    sizes: Mapping[str, int],
    near: Mapping[str, int] | None = None,
    example: Mapping[str, str] | None = None,
) -> None:
    """Fail when more than `OVERLAP_LIMIT` of a held-out split is also in train: exact copies (`counts`) and
    near-copies (`near`, from `near_duplicates`; `example` names one pair per split) together."""
    for name in ("test", "validation"):
        total, shared, close = sizes.get(name, 0), counts.get(name, 0), (near or {}).get(name, 0)
        if total and (shared + close) / total > OVERLAP_LIMIT:
            nearly = ""
            if close:
                pair = (example or {}).get(name)
                nearly = f" and {close} more nearly copy a training record" + (f" ({pair})" if pair else "")
            raise DatasetInvalid(
                f"dataset.{name}: {shared} of its {total} record(s) are also in the training data{nearly} "
                f"(by content; more than {OVERLAP_LIMIT:.0%}), so its metrics would measure memorisation; "
                f"remove them from dataset.train, or point dataset.{name} at records that are not trained on"
            )
