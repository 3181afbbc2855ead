"""Reading dataset files (jsonl, json, csv, parquet; gzip/bzip2/xz compressed or not; one file or a prefix of
files) into records.

Why our own readers instead of `datasets.load_dataset`: a user error must name the file and the line
("s3://data/train.jsonl line 17: invalid JSON ..."), which the generic loaders cannot do. Every record
carries its origin (`Record.origin`), so later checks (missing column, unknown label) can point at the
exact line too. The files are copied to local disk once through `storage`, then parsed here, decompressed as
a stream (`encoding.open_bytes`); text is decoded line by line, so the first byte that is not UTF-8 is cited
at its own line, for CSV too (a text-mode CSV reader decodes ahead in 8 KiB blocks and would blame the wrong
line).
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import lzma
import re
import shutil
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.core.errors import DatasetInvalid, DatasetNotFound, StorageNotFound
from finetune_trainer.core.s3_uri import ObjectInfo, S3Uri, local_path
from finetune_trainer.core.storage import Storage
from finetune_trainer.data.encoding import SAMPLE_BYTES, not_utf8, open_bytes, refused_compression, split_compression

log = logging.getLogger(__name__)

EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


METADATA_FILES = frozenset(
    {"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip", "dataset_dict.json"}
)
"""Files of a Hugging Face dataset repository that are not data (`datasets.data_files.FILES_TO_IGNORE`, which
tests/unit/trainer/test_split_files.py compares this with): skipped in a folder or prefix listing, read only
when a URI names one of them itself."""


@dataclass(frozen=True)
class Record:
    """One data row as read (all its columns), and where it came from: `s3://b/k line 17`."""

    data: dict[str, Any]
    origin: str


def detect_format(name: str, declared: str | None) -> str | None:
    """The file format: the declared one, else from the extension before any compression suffix (None: not a
    data file). `d.jsonl.gz` is jsonl."""
    if declared:
        return declared
    suffix = Path(split_compression(name)[0]).suffix.lower()
    return EXTENSIONS.get(suffix)


def _sample(path: Path, compression: str | None) -> bytes:
    with open_bytes(path, compression) as handle:
        return handle.read(SAMPLE_BYTES)


def _decoded(raw_lines: Iterable[bytes], path: Path, compression: str | None, label: str) -> Iterator[tuple[int, str]]:
    """`raw_lines` decoded as UTF-8 (a leading BOM dropped), numbered from 1; the first bad byte is refused
    citing its line and the file's likely encoding."""
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DatasetInvalid(not_utf8(label, number, raw, error, _sample(path, compression))) from None


def _text_lines(path: Path, label: str, compression: str | None = None) -> Iterator[tuple[int, str]]:
    """The file's lines as text (UTF-8, a leading BOM dropped, CRLF or LF), numbered from 1."""
    with open_bytes(path, compression) as handle:
        yield from _decoded(handle, path, compression, label)


def read_jsonl(path: Path, label: str, compression: str | None = None) -> Iterator[Record]:
    for number, text in _text_lines(path, label, compression):
        line = text.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetInvalid(f"{label} line {number}: invalid JSON: {error.msg}") from None
        if not isinstance(value, dict):
            raise DatasetInvalid(f"{label} line {number}: expected a JSON object, got {type(value).__name__}")
        yield Record(value, f"{label} line {number}")


def _array_items(text: str, start: int, label: str) -> Iterator[tuple[int, Any]]:
    """The items of the JSON array opening at `text[start]`, each with the line it starts on."""
    decoder = json.JSONDecoder()
    position, line = start + 1, text.count("\n", 0, start) + 1
    counted = start

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    position = skip(position)
    if position < len(text) and text[position] == "]":
        return
    while True:
        line += text.count("\n", counted, position)
        counted = position
        try:
            item, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DatasetInvalid(f"{label} line {error.lineno}: invalid JSON: {error.msg}") from None
        yield line, item
        position = skip(end)
        if position < len(text) and text[position] == ",":
            position = skip(position + 1)
            continue
        if position < len(text) and text[position] == "]":
            return
        where = text.count("\n", 0, position) + 1
        raise DatasetInvalid(f"{label} line {where}: invalid JSON: expected ',' or ']' between records")


def read_json(path: Path, label: str, compression: str | None = None) -> Iterator[Record]:
    """A JSON array of objects (or an object holding one array); JSON Lines named `.json` also works.

    Records are named by the line they start on and their position: `s3://b/d.json line 4 (record 2)`.
    """
    text = "".join(line for _, line in _text_lines(path, label, compression))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several documents: JSON Lines under a .json name
            yield from read_jsonl(path, label, compression)
            return
        raise DatasetInvalid(f"{label} line {error.lineno}: invalid JSON: {error.msg}") from None
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetInvalid(f"{label}: expected a JSON array of records (or an object holding one array)")
        found = re.search(re.escape(json.dumps(lists[0])) + r"\s*:\s*\[", text)
        start = found.end() - 1 if found else text.index("[")
    elif isinstance(value, list):
        start = text.index("[")
    else:
        raise DatasetInvalid(f"{label}: expected a JSON array of records, got {type(value).__name__}")
    for index, (line, item) in enumerate(_array_items(text, start, label), start=1):
        origin = f"{label} line {line} (record {index})"
        if not isinstance(item, dict):
            raise DatasetInvalid(f"{origin}: expected a JSON object, got {type(item).__name__}")
        yield Record(item, origin)


def _csv_lines(path: Path, compression: str | None) -> Iterator[bytes]:
    """The file's lines as bytes, split at LF, CRLF or a lone CR (old Mac files), each ending kept: what a
    text-mode reader with newline='' hands the csv module."""
    with open_bytes(path, compression) as handle:
        for raw in handle:
            yield from raw.splitlines(keepends=True) if b"\r" in raw.rstrip(b"\r\n") else (raw,)


def read_csv(path: Path, label: str, compression: str | None = None) -> Iterator[Record]:
    """CSV with a header row (UTF-8, with or without BOM, as Excel saves it; CRLF or LF).

    A record may span several lines (a quoted cell with newlines); errors and origins cite the line where
    the record starts, and a byte that is not UTF-8 is cited at its own line.
    """
    reader = csv.reader(text for _, text in _decoded(_csv_lines(path, compression), path, compression, label))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        raise DatasetInvalid(f"{label} line 1: invalid CSV header: {error}") from None
    header = [name.strip() for name in header]
    while True:
        first_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DatasetInvalid(f"{label} line {first_line}: invalid CSV: {error}") from None
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetInvalid(
                f"{label} line {first_line}: {len(row)} fields, but the header has {len(header)} ({', '.join(header)})"
            )
        yield Record(dict(zip(header, row, strict=True)), f"{label} line {first_line}")


def read_parquet(path: Path, label: str, compression: str | None = None) -> Iterator[Record]:
    """Parquet compresses its own columns; a compressed parquet file (`d.parquet.gz`) is decompressed to a
    local file first, as pyarrow reads parquet by seeking."""
    import pyarrow.parquet as pq

    if compression is not None:
        plain = path.with_name(path.name + ".parquet")
        with open_bytes(path, compression) as source, plain.open("wb") as target:
            shutil.copyfileobj(source, target)
        path = plain
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a corrupt file
        raise DatasetInvalid(f"{label}: not a readable parquet file: {error}") from None
    for index, row in enumerate(table.to_pylist(), start=1):
        yield Record(row, f"{label} row {index}")


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def read_file(path: Path, fmt: str, label: str, compression: str | None = None) -> list[Record]:
    """Every record of one local file (decompressed when `compression` is set); errors name `label` (the
    file's S3 URI). A damaged compressed stream is refused naming the compression."""
    try:
        return list(READERS[fmt](path, label, compression))
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
        if compression is None:
            raise
        raise DatasetInvalid(f"{label}: not a readable {compression} file: {error}") from None


@dataclass(frozen=True)
class DataFile:
    """One data object to read, and its file format."""

    obj: ObjectInfo
    format: str
    compression: str | None = None
    """gzip, bzip2 or xz when the name ends in .gz, .bz2 or .xz (decompressed while reading)."""


def list_files(storage: Storage, uri: str, declared_format: str | None, field: str) -> list[DataFile]:
    """The data files a URI names: one file, a folder, or a key prefix (`s3://b/data/train-`).

    `field` names the config field (`dataset.train`) for messages about missing data.
    """
    location = S3Uri.parse(uri)
    try:
        objects = storage.list(location)
    except StorageNotFound as error:
        raise StorageNotFound(f"{field}: {error}") from None
    if not objects:
        raise DatasetNotFound(f"{field}: no data at {uri} (neither a file, a folder nor a key prefix)")
    metadata = [o for o in objects if o.uri.name in METADATA_FILES and o.uri.key != location.key]
    for obj in metadata:
        log.info("%s: %s is a dataset repository's metadata, not data: not read", field, obj.uri)
    candidates = [o for o in objects if o not in metadata]
    for obj in candidates:
        if refused := refused_compression(obj.uri.name):
            raise DatasetInvalid(
                f"{field}: {obj.uri} is {refused}-compressed or an archive, which the trainer does not read; "
                "upload the files uncompressed, or compressed with gzip (.gz), bzip2 (.bz2) or xz (.xz)"
            )
    usable = [
        DataFile(o, fmt, split_compression(o.uri.name)[1])
        for o in candidates
        if (fmt := detect_format(o.uri.key, declared_format))
    ]
    if not usable:
        names = ", ".join(o.uri.name for o in objects[:10])
        raise DatasetNotFound(
            f"{field}: no jsonl/json/csv/parquet file (optionally .gz, .bz2 or .xz) at {uri} (found: {names}); "
            "set dataset.format when the files have no extension"
        )
    return usable


def read_files(storage: Storage, uri: str, files: list[DataFile], local_dir: Path, field: str) -> list[Record]:
    """Download `files` (listed under `uri`) and read their records in key order."""
    location = S3Uri.parse(uri)
    records: list[Record] = []
    for item in files:
        path = storage.download_file(item.obj.uri, local_path(item.obj.uri, location, local_dir), item.obj)
        found = read_file(path, item.format, str(item.obj.uri), item.compression)
        log.info("%s: %d record(s) from %s", field, len(found), item.obj.uri)
        records.extend(found)
    return records


def load_records(storage: Storage, uri: str, declared_format: str | None, local_dir: Path, field: str) -> list[Record]:
    """Every record of the file, folder or key prefix at `uri`."""
    return read_files(storage, uri, list_files(storage, uri, declared_format, field), local_dir, field)
