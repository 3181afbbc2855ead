"""S3 addresses: a parsed `s3://bucket/key`, one object of a listing, and where a listed object lands locally.

Why apart from `storage`: these are pure values (no boto3) used wherever a URI is parsed, joined or mapped to a
local path; `relative_key` is the one place that decides where a listed object lands below a local folder.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_trainer.core.errors import ConfigInvalid


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
    (`data/train-` matching `data/train-00000.parquet`): the path below the prefix's folder.
    """
    if key.key == location.key:
        return key.name
    if key.key.startswith(location.prefix):
        return key.key[len(location.prefix) :]
    return key.key[location.key.rfind("/") + 1 :]
