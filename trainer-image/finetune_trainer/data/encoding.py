"""Compressed data files, and what to tell a user whose text file is not UTF-8.

Why here and not in each reader: every text format (jsonl, json, csv) reads its bytes through `open_bytes`
(so `.gz`, `.bz2` and `.xz` work for all of them, decompressed as a stream) and refuses undecodable bytes through
`not_utf8`, so the message is the same everywhere: the file, the line of the first bad byte, the byte itself,
the encoding the file most likely has, how the line reads in it, and the fix.

Compressions: gzip, bzip2 and xz are in Python's standard library and are read. zstd (not in the standard library
before Python 3.14, and no zstd package is a dependency), zip, 7z, rar, lz4, brotli and tar archives are refused
by name (`refused_compression`): an archive may hold several files of several formats, which the user should
unpack and upload as they are.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
from io import BufferedIOBase
from pathlib import Path, PurePosixPath

COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bzip2", ".xz": "xz"}
"""Suffixes of the compressions that are read (the file's format is the suffix before it: `.jsonl.gz`)."""

REFUSED: dict[str, str] = {
    ".zst": "zstd",
    ".zstd": "zstd",
    ".zip": "zip",
    ".7z": "7z",
    ".rar": "rar",
    ".lz4": "lz4",
    ".br": "brotli",
    ".tar": "tar",
    ".tgz": "tar+gzip",
    ".tbz2": "tar+bzip2",
    ".txz": "tar+xz",
}
"""Suffixes of compressions and archives that are refused by name."""

SAMPLE_BYTES = 1 << 16
"""How much of a file the encoding guess reads besides the bad line (charset-normalizer samples it anyway)."""


def split_compression(name: str) -> tuple[str, str | None]:
    """`(name without the compression suffix, compression)`; `("d.jsonl", "gzip")` for `d.jsonl.gz`."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in COMPRESSIONS:
        return name[: -len(suffix)], COMPRESSIONS[suffix]
    return name, None


def refused_compression(name: str) -> str | None:
    """The compression or archive a file name says that is not read (`zstd` for `d.jsonl.zst`), else None."""
    base, compression = split_compression(name)
    suffix = PurePosixPath(base).suffix.lower()
    if compression and suffix == ".tar":
        return f"tar+{compression}"
    return REFUSED.get(suffix)


def open_bytes(path: Path, compression: str | None) -> BufferedIOBase:
    """The file's content as a binary stream, decompressed on the fly when `compression` is set."""
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bzip2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    return path.open("rb")


def guess_encoding(sample: bytes) -> str:
    """The most likely encoding of `sample` (bytes that are not UTF-8), named as Python's codecs name it.

    Byte-order marks and NUL bytes say UTF-16/32 outright; otherwise charset-normalizer's best guess, except that
    cp1252 (Windows-1252, what Excel on Windows saves "CSV" in) wins a tie: on short samples charset-normalizer
    scores several single-byte code pages the same and lists cp1250 first for French text.
    """
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32")):
        if sample.startswith(bom):
            return name
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    head = sample[:4096]
    if head.count(0) > len(head) // 4:
        return "utf-16-le" if head[1:2] == b"\x00" else "utf-16-be"
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # a declared dependency; without it, name the usual suspect
        return "cp1252" if _decodes(sample, "cp1252") else "latin-1"
    matches = list(from_bytes(sample))
    if not matches:
        return "cp1252" if _decodes(sample, "cp1252") else "latin-1"
    best = matches[0]
    tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    if any("cp1252" in m.could_be_from_charset for m in tied):
        return "cp1252"
    return str(best.encoding)


def _decodes(sample: bytes, encoding: str) -> bool:
    try:
        sample.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def not_utf8(label: str, line: int, raw: bytes, error: UnicodeDecodeError, sample: bytes) -> str:
    """The message for the first undecodable byte of a file: `raw` is its line (as bytes), `sample` the file's
    head (for the encoding guess)."""
    bad = raw[error.start : error.end]
    encoding = guess_encoding(sample + b"\n" + raw if raw not in sample else sample)
    shown = ""
    try:
        start = max(0, error.start - 20)
        snippet = raw[start : error.end + 20].decode(encoding).strip()
        shown = f"; as {encoding} it reads {snippet!r}"
    except (UnicodeDecodeError, LookupError):
        pass
    column = len(raw[: error.start].decode("utf-8", errors="replace")) + 1
    return (
        f"{label} line {line}: not UTF-8 text: byte 0x{bad.hex().upper()} at column {column} ({error.reason}); "
        f"the file is likely {encoding}{shown}. Save it as UTF-8 (Excel: Save As, 'CSV UTF-8'; or "
        f"`iconv -f {encoding} -t utf-8 in > out`) and upload it again"
    )
