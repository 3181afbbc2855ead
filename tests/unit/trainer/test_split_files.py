"""A dataset folder's files split by their names exactly as Hugging Face `datasets` splits them (issue 25).

The reference is `datasets` itself: each layout is written to a local folder, resolved by
`datasets.data_files.get_data_patterns` + `DataFilesDict.from_patterns` (what `load_dataset(folder)` does), and
compared with `split_files.by_name` on the same relative paths. Where `datasets` would drop a file or put one
file in two splits, `by_name` refuses it by name instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.split_files import by_name, folder_paths

LAYOUTS = {
    "three files": ["train.jsonl", "validation.jsonl", "test.jsonl"],
    "hf shards": [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    ],
    "split folders": ["train/part-0.jsonl", "train/part-1.jsonl", "dev/part-0.jsonl", "eval/part-0.jsonl"],
    "words after a separator": ["my_train.csv", "my_valid.csv", "my_testing.csv"],
    "numbered": ["train_0.jsonl", "train_1.jsonl", "val.jsonl", "test-2024.json"],
    "train and test only": ["training.jsonl", "evaluation.jsonl"],
    "gzip": ["train.jsonl.gz", "test.jsonl.gz"],
}


def datasets_splits(folder: Path, paths: list[str]) -> dict[str, list[str]]:
    """What `datasets` makes of a folder holding `paths` (split -> relative paths, sorted)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    for path in paths:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text("{}\n")
    resolved = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    return {str(split): sorted(str(Path(f).relative_to(folder)) for f in files) for split, files in resolved.items()}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_same_splits_as_datasets(tmp_path: Path, layout: str) -> None:
    paths = LAYOUTS[layout]
    expected = datasets_splits(tmp_path, paths)
    named = by_name(paths, "s3://b/d/")
    assert named is not None
    assert {split: sorted(found) for split, found in named.files.items()} == expected, named.rule


def test_unnamed_folder_is_all_train_as_in_datasets(tmp_path: Path) -> None:
    paths = ["a.jsonl", "b.jsonl", "contest.jsonl"]  # `contest` is no split word: no separator before `test`
    assert datasets_splits(tmp_path, paths) == {"train": sorted(paths)}
    assert by_name(paths, "s3://b/d/") is None


def test_shards_of_other_splits_and_aliases() -> None:
    named = by_name(["data/train-00000-of-00001.parquet", "data/dev-00000-of-00001.parquet"], "s3://b/d/")
    assert named is not None and named.files == {
        "train": ["data/train-00000-of-00001.parquet"],
        "validation": ["data/dev-00000-of-00001.parquet"],
    }
    with pytest.raises(DatasetInvalid, match=r"s3://b/d/data/unsupervised-00000-of-00001.parquet is named as split "):
        by_name(["data/train-00000-of-00001.parquet", "data/unsupervised-00000-of-00001.parquet"], "s3://b/d/")


def test_files_datasets_would_drop_or_double_are_refused_by_name(tmp_path: Path) -> None:
    dropped = ["train.jsonl", "test.jsonl", "notes.jsonl"]
    assert "notes.jsonl" not in {f for files in datasets_splits(tmp_path / "a", dropped).values() for f in files}
    with pytest.raises(DatasetInvalid, match=r"s3://b/d/notes.jsonl: the folder's files are named by split"):
        by_name(dropped, "s3://b/d/")
    with pytest.raises(DatasetInvalid, match=r"s3://b/d/train_test.jsonl is named as both train and test"):
        by_name(["train_test.jsonl", "test.jsonl"], "s3://b/d/")


def test_only_a_folder_is_split_by_names() -> None:
    assert folder_paths("s3://b/d/", ["d/train.jsonl", "d/x/test.jsonl"]) == (
        "s3://b/d/",
        ["train.jsonl", "x/test.jsonl"],
    )
    assert folder_paths("s3://b/d", ["d/train.jsonl"]) == ("s3://b/d/", ["train.jsonl"])  # a folder without '/'
    assert folder_paths("s3://b/", ["train.jsonl"]) == ("s3://b/", ["train.jsonl"])
    assert folder_paths("s3://b/d/test.jsonl", ["d/test.jsonl"]) is None  # one file, named as train
    assert folder_paths("s3://b/d/test-", ["d/test-0.jsonl", "d/test-1.jsonl"]) is None  # a key prefix


def test_a_dataset_repositorys_metadata_files_are_the_ones_datasets_ignores() -> None:
    from datasets.data_files import FILES_TO_IGNORE
    from finetune_trainer.data.readers import METADATA_FILES

    assert frozenset(FILES_TO_IGNORE) == METADATA_FILES
