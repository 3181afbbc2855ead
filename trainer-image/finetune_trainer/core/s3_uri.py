"""S3 addresses: a parsed `s3://bucket/key`, one object of a listing, and where a listed object lands locally.

Why apart from `storage`: these are pure values (no boto3) used wherever a URI is parsed, joined or mapped to a
local path; `relative_key` is the one place that decides where a listed object lands below a local folder, and
`local_path` the one way a listed object becomes a file name on disk (both refuse keys that would leave the
folder: core/paths.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.core.paths import inside, relative_path


@dataclass(frozen=True)
class S3Uri:
    """A parsed `s3://bucket/key` address; a key ending in `/` (or empty) names a prefix."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """Parse `s3://bucket[/key]`; anything else is a config error naming the bad value."""
        if not uri.startswith("s3://"):
            raise ConfigInvalid(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigInvalid(f"s3 URI without a bucket: {uri!r}")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def prefix(self) -> str:
        """The key as a folder prefix (with one trailing slash, or empty for the bucket root)."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"

    def join(self, *parts: str) -> S3Uri:
        """A child of this URI taken as a folder: `s3://b/run-2/` + `model/x` -> `s3://b/run-2/model/x`."""
        tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
        trailing = "/" if parts and parts[-1].endswith("/") else ""
        return S3Uri(self.bucket, self.prefix + tail + trailing)

    @property
    def name(self) -> str:
        """The last path component (the file name of a file URI)."""
        return self.key.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ObjectInfo:
    """One object in a listing."""

    uri: S3Uri
    size: int
    etag: str = ""
    """The server's entity tag (quotes removed): changes whenever the object's content changes."""


def relative_key(key: S3Uri, location: S3Uri) -> str:
    """Where an object listed under `location` lands below a local folder (the one place this is decided).

    The object itself (a file URI): its name. Under a folder: the path below it. Under a key prefix
    (`data/train-` matching `data/train-00000.parquet`): the path below the prefix's folder. A key whose part
    below the prefix is no safe relative path (`..`, `.` or empty segments, absolute, backslash, NUL) is
    `UnsafeObjectKey` naming the key and `location`: S3 stores and lists such keys verbatim.
    """
    if key.key == location.key:
        relative = key.name
    elif key.key.startswith(location.prefix):
        relative = key.key[len(location.prefix) :]
    else:
        relative = key.key[location.key.rfind("/") + 1 :]
    return str(relative_path(relative, key=key.key, prefix=str(location)))


def local_path(key: S3Uri, location: S3Uri, folder: Path) -> Path:
    """The file below `folder` that the object `key`, listed under `location`, is downloaded to: its
    `relative_key`, checked after resolving to stay inside `folder`."""
    relative = PurePosixPath(relative_key(key, location))
    return inside(folder, relative, what=f"object key {key.key!r} under {location}")
