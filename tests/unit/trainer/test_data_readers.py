"""File readers name the file and line of a problem; every format yields the same records."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import DatasetInvalid
from finetune_trainer.data.encoding import guess_encoding, refused_compression, split_compression
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
    with pytest.raises(DatasetInvalid, match=r"f line 2: not UTF-8 text: byte 0xE9 at column 14 .* Save it as UTF-8"):
        read_file(lines, "jsonl", "f")


# --- compression (issue 25) ------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "opener"), [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_text_formats_are_read(tmp_path: Path, suffix: str, opener: Any) -> None:
    bodies = {
        "jsonl": b'{"text": "a"}\n\n{"text": "b"}\n',
        "json": b'[{"text": "a"},\n {"text": "b"}]',
        "csv": b"text\r\na\r\nb\r\n",
    }
    for fmt, body in bodies.items():
        path = tmp_path / f"d.{fmt}{suffix}"
        with opener(path, "wb") as handle:
            handle.write(body)
        assert detect_format(path.name, None) == fmt
        name, compression = split_compression(path.name)
        assert name == f"d.{fmt}" and compression is not None
        records = read_file(path, fmt, "f", compression)
        assert [r.data["text"] for r in records] == ["a", "b"], fmt
    assert [r.origin for r in read_file(tmp_path / f"d.jsonl{suffix}", "jsonl", "f", compression)][1] == "f line 3"


def test_compressed_parquet_is_read(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), plain)
    packed = tmp_path / "d.parquet.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert detect_format(packed.name, None) == "parquet"
    assert [r.data["text"] for r in read_file(packed, "parquet", "f", "gzip")] == ["a", "b"]


def test_damaged_gzip_names_the_compression(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(b'{"text": "not gzip"}\n')
    with pytest.raises(DatasetInvalid, match="f: not a readable gzip file"):
        read_file(path, "jsonl", "f", "gzip")
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:-30])
    with pytest.raises(DatasetInvalid, match="f: not a readable gzip file"):
        read_file(truncated, "jsonl", "f", "gzip")
    for compression, suffix in (("xz", ".xz"), ("bzip2", ".bz2")):
        damaged = tmp_path / f"d.jsonl{suffix}"
        damaged.write_bytes(b"garbage, not compressed at all")
        with pytest.raises(DatasetInvalid, match=f"f: not a readable {compression} file"):
            read_file(damaged, "jsonl", "f", compression)


def test_unsupported_compressions_and_archives_are_named() -> None:
    assert refused_compression("d.jsonl.zst") == "zstd"
    assert refused_compression("d.csv.zip") == "zip"
    assert refused_compression("data.tar.gz") == "tar+gzip"
    assert refused_compression("d.jsonl.7z") == "7z"
    for name in ("d.jsonl.gz", "d.csv.bz2", "d.json.xz", "d.parquet", "README.md"):
        assert refused_compression(name) is None, name


# --- encodings: the first bad byte, at its own line, with the likely encoding (issue 25) -----------------


def test_cp1252_csv_is_refused_at_the_line_of_the_first_bad_byte(tmp_path: Path) -> None:
    """A text-mode CSV reader decodes 8 KiB ahead: it blamed the header of a small file, and line 1346 for a
    bad byte on line 1501 of a large one."""
    rows = ["prompt,completion"] + [f"question {i},answer {i}" for i in range(2000)]
    rows[1500] = "caf\xe9 au lait,tr\xe8s bien"  # line 1501
    path = tmp_path / "excel.csv"
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))
    with pytest.raises(DatasetInvalid) as error:
        read_file(path, "csv", "s3://b/excel.csv")
    message = str(error.value)
    assert message.startswith("s3://b/excel.csv line 1501: not UTF-8 text: byte 0xE9 at column 4"), message
    assert "likely cp1252" in message and "'café au lait,très bien'" in message and "Save it as UTF-8" in message
    small = tmp_path / "small.csv"
    small.write_bytes("prompt,completion\nna\xefve,ok\n".encode("cp1252"))
    with pytest.raises(DatasetInvalid, match=r"^f line 2: not UTF-8 text: byte 0xEF .* likely cp1252"):
        read_file(small, "csv", "f")


def test_other_encodings_are_named(tmp_path: Path) -> None:
    cyrillic = tmp_path / "ru.jsonl"
    russian = (  # "hello, how are things today", escaped: ruff flags Cyrillic letters that look Latin
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430 "
        "\u0441\u0435\u0433\u043e\u0434\u043d\u044f"
    )
    cyrillic.write_bytes(('{"text": "ok"}\n{"text": "' + russian + '"}\n').encode("cp1251"))
    with pytest.raises(DatasetInvalid, match=rf"f line 2: .* likely cp1251; as cp1251 it reads .*{russian[:6]}"):
        read_file(cyrillic, "jsonl", "f")
    wide = tmp_path / "u.csv"
    wide.write_text("prompt,completion\na,b\n", encoding="utf-16")  # Excel's "Unicode text"
    with pytest.raises(DatasetInvalid, match=r"f line 1: not UTF-8 text: byte 0xFF .* likely utf-16"):
        read_file(wide, "csv", "f")
    assert guess_encoding("Größe".encode("latin-1")) == "cp1252"


def test_csv_with_old_mac_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"prompt,completion\ra,b\rc,d\r")
    assert [(r.data["prompt"], r.origin) for r in read_file(path, "csv", "f")] == [("a", "f line 2"), ("c", "f line 3")]
