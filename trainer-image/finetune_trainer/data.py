"""Reading dataset files (jsonl, json, csv, parquet; one file or a prefix of files) into records.

Why our own readers instead of `datasets.load_dataset`: a user error must name the file and the line
("s3://data/train.jsonl line 17: invalid JSON ..."), which the generic loaders cannot do. Every record
carries its origin (`Record.origin`), so later checks (missing column, unknown label) can point at the
exact line too. The files are copied to local disk once through `storage`, then parsed here.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.errors import DatasetInvalid, DatasetNotFound, StorageNotFound
from finetune_trainer.storage import S3Uri, Storage

log = logging.getLogger(__name__)

EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class Record:
    """One data row as read (all its columns), and where it came from: `s3://b/k line 17`."""

    data: dict[str, Any]
    origin: str


def detect_format(name: str, declared: str | None) -> str | None:
    """The file format: the declared one, else from the extension (None: not a data file)."""
    if declared:
        return declared
    suffix = Path(name).suffix.lower()
    return EXTENSIONS.get(suffix)


def read_jsonl(path: Path, label: str) -> Iterator[Record]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8 text"
                raise DatasetInvalid(f"{label} line {number}: invalid JSON: {reason}") from None
            if not isinstance(value, dict):
                raise DatasetInvalid(f"{label} line {number}: expected a JSON object, got {type(value).__name__}")
            yield Record(value, f"{label} line {number}")


def read_json(path: Path, label: str) -> Iterator[Record]:
    """A JSON array of objects (or an object with one array field); JSON Lines named `.json` also works."""
    text = path.read_text(encoding="utf-8", errors="strict")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several documents: JSON Lines under a .json name
            yield from read_jsonl(path, label)
            return
        raise DatasetInvalid(f"{label} line {error.lineno}: invalid JSON: {error.msg}") from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetInvalid(f"{label}: expected a JSON array of records (or an object holding one array)")
        value = lists[0]
    if not isinstance(value, list):
        raise DatasetInvalid(f"{label}: expected a JSON array of records, got {type(value).__name__}")
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DatasetInvalid(f"{label} record {index}: expected a JSON object, got {type(item).__name__}")
        yield Record(item, f"{label} record {index}")


def read_csv(path: Path, label: str) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as error:
            raise DatasetInvalid(f"{label} line 1: invalid CSV header: {error}") from None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as error:
                raise DatasetInvalid(f"{label} line {reader.line_num}: invalid CSV: {error}") from None
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetInvalid(
                    f"{label} line {reader.line_num}: {len(row)} fields, but the header has "
                    f"{len(header)} ({', '.join(header)})"
                )
            yield Record(dict(zip(header, row, strict=True)), f"{label} line {reader.line_num}")


def read_parquet(path: Path, label: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a corrupt file
        raise DatasetInvalid(f"{label}: not a readable parquet file: {error}") from None
    for index, row in enumerate(table.to_pylist(), start=1):
        yield Record(row, f"{label} row {index}")


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def read_file(path: Path, fmt: str, label: str) -> list[Record]:
    """Every record of one local file; errors name `label` (the file's S3 URI)."""
    try:
        return list(READERS[fmt](path, label))
    except UnicodeDecodeError as error:
        raise DatasetInvalid(f"{label}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def load_records(storage: Storage, uri: str, declared_format: str | None, local_dir: Path, field: str) -> list[Record]:
    """Download the file or every data file under the prefix at `uri` and read their records in key order.

    `field` names the config field (`dataset.train`) for messages about missing data.
    """
    location = S3Uri.parse(uri)
    try:
        objects = storage.list(location)
    except StorageNotFound as error:
        raise StorageNotFound(f"{field}: {error}") from None
    if not objects:
        raise DatasetNotFound(f"{field}: no data at {uri}")
    files = [(o, detect_format(o.uri.key, declared_format)) for o in objects]
    usable = [(o, fmt) for o, fmt in files if fmt is not None]
    if not usable:
        names = ", ".join(o.uri.name for o in objects[:10])
        raise DatasetNotFound(
            f"{field}: no jsonl/json/csv/parquet file at {uri} (found: {names}); "
            "set dataset.format when the files have no extension"
        )
    records: list[Record] = []
    for obj, fmt in usable:
        relative = obj.uri.name if obj.uri.key == location.key else obj.uri.key[len(location.prefix) :]
        path = storage.download_file(obj.uri, local_dir / relative, obj.size)
        found = read_file(path, fmt, str(obj.uri))
        log.info("%s: %d record(s) from %s", field, len(found), obj.uri)
        records.extend(found)
    return records
