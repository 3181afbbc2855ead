"""Which files of a dataset folder are train, validation or test, by their names, as `datasets` decides it.

Why: a folder with `train.jsonl`, `validation.jsonl` and `test.jsonl` is the layout `datasets.load_dataset`
maps to three splits by file name; given as `dataset.train`, its held-out files must not be trained on. The
patterns are Hugging Face `datasets`' own (`datasets.data_files`, imported, not copied: its shard pattern
`data/{split}-00000-of-00001*.*`, then split names in folder names, then in file names; the first that matches
any file decides), matched with fsspec's glob translation as `datasets` resolves them; a unit test compares the
result with `datasets`' own resolution of the same folder. The split words are `datasets`' too: train/training,
validation/valid/dev/val, test/testing/eval/evaluation, before a separator (`-._ ` or a digit) and after one or
a slash (`my_test.jsonl`, `test-00000.parquet`, `dev/part-0.csv`).

Where `datasets` would silently leave a file out (a file of a folder whose other files are named by split, but
whose own name says none; a shard of a split other than train/validation/test) or put one file in two splits
(`train_test.jsonl`), `by_name` refuses it by name: nothing is dropped or both trained and tested on unseen.
Only a folder is split by names: a file URI, or a key prefix (`s3://b/data/train-`), names training files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath

from datasets.data_files import ALL_DEFAULT_PATTERNS, ALL_SPLIT_PATTERNS, SPLIT_KEYWORDS
from fsspec.utils import glob_translate

from finetune_trainer.core.errors import DatasetInvalid

SPLITS = ("train", "validation", "test")
ALIASES: dict[str, str] = {word: str(split) for split, words in SPLIT_KEYWORDS.items() for word in words}
"""Every split word `datasets` knows, to its split: `dev` -> validation, `eval` -> test."""


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(glob_translate(pattern))


def _matches(pattern: str, path: str) -> bool:
    return _regex(pattern).fullmatch(path) is not None


@dataclass(frozen=True)
class NamedSplits:
    """The folder's files by split (relative paths, in listing order) and the rule that decided it."""

    files: dict[str, list[str]]
    rule: str


def _sharded(paths: Sequence[str]) -> NamedSplits | None:
    for template in ALL_SPLIT_PATTERNS:
        found = [p for p in paths if _matches(template.replace("{split}", "*"), p)]
        if not found:
            continue
        files: dict[str, list[str]] = {}
        for path in found:
            word = PurePosixPath(path).name.split("-", 1)[0]
            files.setdefault(word, []).append(path)
        return NamedSplits(files, f"datasets' shard names ({template})")
    return None


def _by_patterns(paths: Sequence[str]) -> NamedSplits | None:
    for patterns in ALL_DEFAULT_PATTERNS:
        files = {
            str(split): [p for p in paths if any(_matches(pattern, p) for pattern in globs)]
            for split, globs in patterns.items()
        }
        files = {split: found for split, found in files.items() if found}
        if files:
            if list(files) == ["train"] and all(g == "**" for g in patterns.get("train", [])):
                return None  # datasets' fallback: every file is train, no file is named by split
            kind = "folder" if any("/**" in g for globs in patterns.values() for g in globs) else "file"
            return NamedSplits(files, f"datasets' split words in {kind} names")
    return None


def by_name(paths: Sequence[str], where: str) -> NamedSplits | None:
    """The split of each relative path under the folder `where` (an S3 URI, for messages); None when no file is
    named by split (all are train). Refuses files that `datasets` would drop or put in two splits."""
    named = _sharded(paths) or _by_patterns(paths)
    if named is None:
        return None
    files: dict[str, list[str]] = {}
    for word, found in named.files.items():
        split = ALIASES.get(word)
        if split is None:
            raise DatasetInvalid(
                f"dataset.train: {where}{found[0]} is named as split {word!r} ({named.rule}), which the trainer "
                "has no use for (it trains on train, evaluates on validation and test); move it out of the folder "
                f"or point dataset.train at the training files (a key prefix such as {where}data/train-)"
            )
        files.setdefault(split, []).extend(found)
    seen: dict[str, str] = {}
    for split in SPLITS:
        for path in files.get(split, []):
            if path in seen:
                raise DatasetInvalid(
                    f"dataset.train: {where}{path} is named as both {seen[path]} and {split} ({named.rule}); "
                    "rename it so that its name says one split"
                )
            seen[path] = split
    unnamed = [p for p in paths if p not in seen]
    if unnamed:
        named_list = ", ".join(f"{p} ({seen[p]})" for p in list(seen)[:4])
        raise DatasetInvalid(
            f"dataset.train: {where}{unnamed[0]}: the folder's files are named by split ({named_list}; "
            f"{named.rule}), and this one's name says no split, so it would be neither trained nor evaluated on. "
            "Rename it (train-2.jsonl), move it out, or point dataset.train at the files to train on"
        )
    return NamedSplits({split: files[split] for split in SPLITS if split in files}, named.rule)


def folder_paths(uri: str, keys: Sequence[str]) -> tuple[str, list[str]] | None:
    """`(the folder's URI with a trailing slash, each key relative to it)` when `uri` names a folder holding
    `keys` (a bucket root, a key ending in `/`, or a key that every listed key is below); None for one file or
    a key prefix."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    prefix = key if not key or key.endswith("/") else key + "/"
    if not all(k.startswith(prefix) for k in keys) or (len(keys) == 1 and keys[0] == key):
        return None
    return f"s3://{bucket}/{prefix}", [k[len(prefix) :] for k in keys]
