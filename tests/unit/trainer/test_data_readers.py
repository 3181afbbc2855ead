"""File readers name the file and line of a problem; every format yields the same records."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.readers import detect_format, read_file


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    records = read_file(path, "jsonl", "s3://b/d.jsonl")
    assert [r.data["text"] for r in records] == ["a", "b"]
    assert records[1].origin == "s3://b/d.jsonl line 3"


def test_jsonl_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DatasetInvalid, match=r"s3://b/d.jsonl line 2: invalid JSON"):
        read_file(path, "jsonl", "s3://b/d.jsonl")


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DatasetInvalid, match="line 1: expected a JSON object, got list"):
        read_file(path, "jsonl", "f")


def test_json_array_and_jsonl_named_json(tmp_path: Path) -> None:
    array = tmp_path / "a.json"
    array.write_text('[{"text": "a"}, {"text": "b"}]')
    assert [r.origin for r in read_file(array, "json", "f")] == ["f line 1 (record 1)", "f line 1 (record 2)"]
    pretty = tmp_path / "p.json"
    pretty.write_text('{"data": [\n  {"text": "a"},\n  {"text":\n   "b"},\n  ["x"]\n]}\n')
    with pytest.raises(DatasetInvalid, match=r"f line 5 \(record 3\): expected a JSON object, got list"):
        read_file(pretty, "json", "f")
    assert [r.origin for r in read_file(array, "json", "f")][1] == "f line 1 (record 2)"
    lines = tmp_path / "b.json"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert len(read_file(lines, "json", "f")) == 2


def test_csv_rows_and_ragged_row(tmp_path: Path) -> None:
    good = tmp_path / "d.csv"
    good.write_text('text,label\n"hello, world",pos\nbye,neg\n')
    records = read_file(good, "csv", "f")
    assert records[0].data == {"text": "hello, world", "label": "pos"}
    assert records[1].origin == "f line 3"
    ragged = tmp_path / "r.csv"
    ragged.write_text("text,label\nhello,pos,extra\n")
    with pytest.raises(DatasetInvalid, match="f line 2: 3 fields, but the header has 2"):
        read_file(ragged, "csv", "f")


def test_parquet_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), path)
    records = read_file(path, "parquet", "f")
    assert records[1].data == {"text": "b", "label": 1} and records[1].origin == "f row 2"


def test_corrupt_parquet_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(DatasetInvalid, match="not a readable parquet file"):
        read_file(path, "parquet", "f")


def test_format_detection() -> None:
    assert detect_format("x/train.JSONL", None) == "jsonl"
    assert detect_format("x/part-0000", None) is None
    assert detect_format("x/part-0000", "csv") == "csv"


def test_utf8_bom_and_crlf_as_editors_and_excel_save_them(tmp_path: Path) -> None:
    lines = tmp_path / "d.jsonl"
    lines.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}\r\n')
    assert [(r.data, r.origin) for r in read_file(lines, "jsonl", "f")] == [
        ({"text": "a"}, "f line 1"),
        ({"text": "b"}, "f line 3"),
    ]
    table = tmp_path / "excel.csv"
    table.write_bytes('\ufeffprompt,completion\r\n"two\r\nlines",b\r\nc,d\r\n'.encode())
    records = read_file(table, "csv", "f")
    assert records[0].data == {"prompt": "two\r\nlines", "completion": "b"}  # not '\ufeffprompt'
    assert [r.origin for r in records] == ["f line 2", "f line 4"]  # where each record starts


def test_csv_error_cites_the_line_where_the_record_starts(tmp_path: Path) -> None:
    table = tmp_path / "d.csv"
    table.write_text('prompt,completion\na,b\n"three\nline\ncell",x,extra\n')
    with pytest.raises(DatasetInvalid, match="f line 3: 3 fields"):
        read_file(table, "csv", "f")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    lines = tmp_path / "d.jsonl"
    lines.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DatasetInvalid, match=r"f line 2: not UTF-8 text .* save the file as UTF-8"):
        read_file(lines, "jsonl", "f")
