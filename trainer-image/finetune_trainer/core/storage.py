"""Object storage (S3 API through boto3) for the trainer and the model server.

Why one module: every byte the trainer reads or writes goes through here, so credentials, endpoint and
error classification live in one place. The operator passes the endpoint and keys as the standard AWS_*
variables (docs/trainer-contract.md section 2), so any S3-compatible store works and boto3's own
resolution (pod identity, session tokens) stays intact. botocore failures become typed user errors
(`StorageAccessDenied`, `StorageNotFound`) with the URI in the message, because a wrong key or a
missing bucket must fail the job at once with a message the user can act on, not crash-loop.
Downloads go to local disk once, with progress in the log, so large models are never read twice; a local
copy is reused only when it is the same object (its ETag, recorded in a hidden `.<name>.s3-etag` file beside
it when downloaded): a corrected config.json or data file of the same length is fetched again.

Patience: an S3 server that is down (restarted, failing over) or answers 5xx is waited for, every call retried
with a growing pause, for up to `FTO_S3_PATIENCE_SECONDS` (default 300) from the first failure of that call;
then `StorageUnavailable` (retryable: exit 1, the next pod resumes). boto3's own retries (5 attempts, seconds)
come first. Only errors that say nothing about the request are retried: refused, reset or timed-out
connections and 5xx/throttling answers; a 403 or 404 fails at once. `OUTAGES` counts the retries and the time
waited (the chaos benchmark's figures; the log has a line per retry).
Integrity (core/integrity.py): every upload records the sha256 of its bytes as the object's user metadata
(`x-amz-meta-fto-sha256`) in the request that writes it, and is checked after (HEAD: the stored size); every
download is checked against what is recorded (size always, the sha256 when recorded or named by a manifest, the
ETag's MD5 when it is one), and one that differs is downloaded once more, then refused as `ObjectCorrupt` (exit
42) naming the bucket and key. `INTEGRITY` counts those retries and refusals (the chaos benchmark's figures).
The addresses themselves (`S3Uri`, `ObjectInfo`, `relative_key`, `local_path`) are `s3_uri`; every download lands
at `local_path`, which refuses keys that would leave the download folder (core/paths.py).
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from finetune_trainer.core import integrity
from finetune_trainer.core.disk import ensure_free_space
from finetune_trainer.core.errors import (
    ConfigInvalid,
    InternalError,
    ObjectCorrupt,
    StorageAccessDenied,
    StorageNotFound,
    StorageUnavailable,
)
from finetune_trainer.core.s3_uri import ObjectInfo, S3Uri, local_path

log = logging.getLogger(__name__)

_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidSecurity",
        "AuthorizationHeaderMalformed",
        "AllAccessDisabled",
        "403",
        "Forbidden",
    }
)
_MISSING_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed", "Throttling"}
)
DEFAULT_PATIENCE_SECONDS = 300.0
RETRY_PAUSES = (1.0, 2.0, 4.0, 8.0, 15.0)  # then 15 s between tries until the patience is spent


def patience_seconds() -> float:
    """How long one S3 call may keep failing transiently before the trainer gives up (FTO_S3_PATIENCE_SECONDS)."""
    raw = os.environ.get("FTO_S3_PATIENCE_SECONDS", "")
    if not raw:
        return DEFAULT_PATIENCE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigInvalid(f"FTO_S3_PATIENCE_SECONDS: not a number of seconds: {raw!r}") from None
    if value < 0:
        raise ConfigInvalid(f"FTO_S3_PATIENCE_SECONDS: must be 0 or more, got {raw!r}")
    return value


ETAG_MD5_ENV = "FTO_S3_ETAG_MD5"


def etag_md5() -> bool:
    """Whether a download of an object with no recorded sha256 is checked against its ETag as an MD5
    (`FTO_S3_ETAG_MD5`, default `on`; `off` for an S3-compatible store whose single-PUT ETags are not MD5s: the
    operator sets it on every pod that reads S3 when the resource's `spec.storage.etagIsMd5` is false)."""
    return on_off(ETAG_MD5_ENV, os.environ.get(ETAG_MD5_ENV, ""), default=True)


def on_off(name: str, raw: str, *, default: bool) -> bool:
    """A switch variable's value: `on` or `off` (case and spaces ignored), empty for `default`; anything else is
    ConfigInvalid naming the variable. One parser for the trainer's and the API service's switches."""
    value = raw.strip().lower()
    if not value:
        return default
    if value not in ("on", "off"):
        raise ConfigInvalid(f"{name}: must be on or off, got {value!r}")
    return value == "on"


@dataclass
class OutageCounter:
    """S3 calls retried after a transient failure, and the seconds spent waiting, in this process."""

    retries: int = 0
    waited_seconds: float = 0.0
    gave_up: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, pause: float) -> None:
        with self.lock:
            self.retries += 1
            self.waited_seconds += pause


OUTAGES = OutageCounter()


@dataclass
class IntegrityCounter:
    """Copies that did not match their object's record (each downloaded once more), and objects refused as corrupt
    after that second download, in this process."""

    retried: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, *, refused: bool) -> None:
        with self.lock:
            if refused:
                self.refused += 1
            else:
                self.retried += 1


INTEGRITY = IntegrityCounter()


@dataclass(frozen=True)
class Uploaded:
    """One object the trainer wrote: where, how many bytes, and the sha256 recorded with it."""

    uri: S3Uri
    size: int
    sha256: str


def is_transient(error: BaseException) -> bool:
    """Whether a botocore/boto3 failure says the server was unreachable or overloaded, not that it refused."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(error, S3UploadFailedError) and isinstance(error.__context__, Exception):
        return is_transient(error.__context__)
    if isinstance(error, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)):
        return True
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    # urllib3 errors botocore did not wrap (a reset while reading a body)
    return type(error).__name__ in ("ProtocolError", "ConnectionResetError", "IncompleteRead", "ResponseStreamingError")


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


def make_client() -> Any:
    """A boto3 S3 client configured from the environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, keys).

    Path-style addressing because in-cluster S3 servers (SeaweedFS, Ceph) rarely have wildcard DNS.
    A fresh session each time: boto3's default session caches the credentials it first resolved.
    """
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def raise_storage_error(error: Exception, uri: S3Uri | str, action: str) -> NoReturn:
    """Translate a botocore exception into the contract's typed errors (always raises)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        raise StorageAccessDenied(f"{action} {uri}: no usable S3 credentials ({error})") from error
    if isinstance(error, EndpointConnectionError):
        raise InternalError(f"{action} {uri}: cannot reach the S3 endpoint ({error})") from error
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        text = details.get("Message") or code or status
        if code in _DENIED_CODES or (not code and status == "403"):
            raise StorageAccessDenied(f"{action} {uri}: access denied by the S3 server ({text})") from error
        if code == "NoSuchBucket":
            bucket = uri.bucket if isinstance(uri, S3Uri) else str(uri)
            raise StorageNotFound(f"{action} {uri}: bucket {bucket!r} does not exist") from error
        if code in _MISSING_CODES or (not code and status == "404"):
            raise StorageNotFound(f"{action} {uri}: no such key") from error
        raise InternalError(f"{action} {uri}: S3 error {code or status}: {text}") from error
    raise InternalError(f"{action} {uri}: {error}") from error


class _Progress:
    """A boto3 transfer callback that logs bytes done at most every few seconds (thread-safe)."""

    def __init__(self, label: str, total: int, interval: float = 5.0) -> None:
        self.label, self.total, self.interval = label, total, interval
        self.done = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, chunk: int) -> None:
        with self.lock:
            self.done += chunk
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                percent = 100.0 * self.done / self.total if self.total else 100.0
                log.info("%s: %.1f / %.1f MiB (%.0f%%)", self.label, self.done / 2**20, self.total / 2**20, percent)


def etag_record(path: Path) -> Path:
    """The hidden file beside a downloaded copy that holds the ETag it was downloaded at."""
    return path.with_name(f".{path.name}.s3-etag")


def is_etag_record(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".s3-etag")


def local_files(folder: Path) -> list[Path]:
    """The files below `folder` that an upload copies (sorted; the ETag records of downloads left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not is_etag_record(p))


_NO_METADATA_WARNED: set[str] = set()


def _warn_once_no_metadata(uri: S3Uri) -> None:
    """The server did not keep the sha256 metadata of an upload: its downloads are checked by size and MD5 only."""
    if uri.bucket not in _NO_METADATA_WARNED:
        _NO_METADATA_WARNED.add(uri.bucket)
        log.warning(
            "%s: the S3 server kept no %s metadata; downloads of bucket %s are checked by size and ETag only",
            uri, integrity.SHA256_METADATA, uri.bucket,
        )  # fmt: skip


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _already_local(dest: Path, info: ObjectInfo) -> bool:
    """A copy of this very object (same size, same recorded ETag) is at `dest`: nothing to fetch."""
    return dest.is_file() and dest.stat().st_size == info.size and _read(etag_record(dest)) == info.etag


def _reusable(dest: Path, info: ObjectInfo, sha256: str | None) -> bool:
    """The copy at `dest` is this object (`_already_local`) and, when a manifest names its sha256, has it."""
    return _already_local(dest, info) and (sha256 is None or integrity.sha256_file(dest) == sha256.lower())


class Storage:
    """S3 operations with typed errors. One instance per process; the client is created lazily."""

    def __init__(self, client: Any | None = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client()
        return self._client

    def _call(self, uri: S3Uri, action: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, retried while the server is unreachable (up to the patience), its errors classified."""
        patience = patience_seconds()
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                return self._call_once(uri, action, fn)
            except StorageUnavailable as error:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                spent = now - first_failure
                if spent >= patience:
                    with OUTAGES.lock:
                        OUTAGES.gave_up += 1
                    raise StorageUnavailable(
                        f"{error} - still failing after {spent:.0f}s and {attempt} retries "
                        f"(FTO_S3_PATIENCE_SECONDS={patience:.0f})"
                    ) from error.__cause__
                pause = min(RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)], patience - spent)
                attempt += 1
                log.warning(
                    "S3 unreachable (%s); retry %d in %.0fs (%.0fs of %.0fs patience spent)", error, attempt, pause,
                    spent, patience,
                )  # fmt: skip
                OUTAGES.add(pause)
                time.sleep(pause)

    def _call_once(self, uri: S3Uri, action: str, fn: Callable[[], Any]) -> Any:
        """`fn()` once: a transient failure becomes StorageUnavailable, the server's refusals the contract's."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except (ClientError, BotoCoreError, S3UploadFailedError) as error:
            if type(error).__name__ == "FlexibleChecksumError":  # botocore checked S3's own checksum of a body
                raise ObjectCorrupt(f"{action} {uri}: {error}") from error
            if is_transient(error):
                raise StorageUnavailable(f"{action} {uri}: S3 unreachable or failing ({error})") from error
            # boto3's upload_file wraps the server's ClientError in its own class (kept as the context);
            # classify the server's answer, so a refused upload is a user error like a refused read
            cause = error.__context__ if isinstance(error, S3UploadFailedError) else error
            raise_storage_error(cause if isinstance(cause, (ClientError, BotoCoreError)) else error, uri, action)
        except Exception as error:
            if is_transient(error):
                raise StorageUnavailable(f"{action} {uri}: S3 unreachable or failing ({error})") from error
            raise

    def iter_objects(self, uri: S3Uri) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `uri.key` (raw prefix match, sorted by key)."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(uri, "listing", lambda: list(paginator.paginate(Bucket=uri.bucket, Prefix=uri.key)))
        for page in pages:
            for item in page.get("Contents", []):
                yield ObjectInfo(S3Uri(uri.bucket, item["Key"]), int(item["Size"]), _etag(item.get("ETag")))

    def list(self, uri: S3Uri) -> builtins.list[ObjectInfo]:
        """The objects a URI names: the one object when the key is a file, else everything under the folder,
        else every object whose key starts with it.

        A key without a trailing slash is tried as a file first, then as a folder (`s3://data/train` for
        `data/train/`), then as a key prefix (`s3://data/train-` for the shards `data/train-00000-of-00002.parquet`
        of a Hugging Face dataset repository). Folder marker objects (keys ending in `/`) are left out.
        """
        if uri.key and not uri.key.endswith("/"):
            candidates = [o for o in self.iter_objects(uri) if not o.uri.key.endswith("/")]
            exact = [o for o in candidates if o.uri.key == uri.key]
            if exact:
                return exact
            folder = [o for o in candidates if o.uri.key.startswith(uri.prefix)]
            return folder or candidates
        return [o for o in self.iter_objects(uri) if not o.uri.key.endswith("/")]

    def exists(self, uri: S3Uri) -> bool:
        """Whether exactly this key exists (a missing key is False; a missing bucket still raises)."""
        try:
            self._call(uri, "reading", lambda: self.client.head_object(Bucket=uri.bucket, Key=uri.key))
        except StorageNotFound:
            self._call(uri, "reading", lambda: self.client.head_bucket(Bucket=uri.bucket))
            return False
        return True

    def head(self, uri: S3Uri) -> ObjectInfo:
        """Size and ETag of one object."""
        head = self._head(uri)
        return ObjectInfo(uri, int(head["ContentLength"]), _etag(head.get("ETag")))

    def _head(self, uri: S3Uri) -> dict[str, Any]:
        """The HEAD answer of one object (size, ETag, metadata, encryption), as boto3 returns it."""
        head: dict[str, Any] = self._call(
            uri, "reading", lambda: self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        )
        return head

    def expected(self, uri: S3Uri, sha256: str | None = None) -> integrity.Expected:
        """What a copy of `uri` must be (integrity.expected_from_head); `sha256`: a manifest's record of it."""
        return integrity.expected_from_head(self._head(uri), sha256, etag_md5())

    def download_file(self, uri: S3Uri, dest: Path, known: ObjectInfo | None = None, sha256: str | None = None) -> Path:
        """Copy one object to `dest` (atomically), verified, unless the same object is already there.

        `known` is the object as listed: a copy at `dest` with its size and ETag (kept in `etag_record(dest)` at
        download) is the same object and is not fetched again (nor hashed again, unless `sha256` names it). A new
        copy is checked against the object's record (integrity.expected_from_head: its size, the sha256 in its
        metadata or `sha256`, a manifest's, and the ETag's MD5); one that differs is downloaded once more, then
        refused with `ObjectCorrupt` naming the key. Only a verified copy ever lands at `dest`.
        """
        if known is not None and known.etag and _reusable(dest, known, sha256):
            log.debug("already local: %s -> %s", uri, dest)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + f".part-{os.getpid()}")
        found: list[str] = []
        attempts = integrity.RETRIES + 1
        for attempt in range(1, attempts + 1):
            head = self._head(uri)
            info = ObjectInfo(uri, int(head["ContentLength"]), _etag(head.get("ETag")))
            if attempt == 1 and known is None and _reusable(dest, info, sha256):
                log.debug("already local: %s -> %s", uri, dest)
                return dest
            expected = integrity.expected_from_head(head, sha256, etag_md5())
            progress = _Progress(str(uri), info.size)
            try:
                fetch = functools.partial(
                    self.client.download_file, uri.bucket, uri.key, str(partial), Callback=progress
                )
                self._call(uri, "downloading", fetch)
                found = integrity.problems(expected, integrity.observe_file(partial, expected))
            except ObjectCorrupt as error:  # S3's own checksum of the body (botocore) did not match
                found = [str(error)]
            if not found:
                record = etag_record(dest)
                record.unlink(missing_ok=True)  # never a new file beside an old ETag
                partial.replace(dest)
                record.write_text(info.etag)
                return dest
            partial.unlink(missing_ok=True)
            INTEGRITY.count(refused=attempt == attempts)
            if attempt < attempts:
                log.warning("%s: the copy does not match the object (%s); downloading it once more", uri, found)
        raise ObjectCorrupt(integrity.corrupt_message(str(uri), found, attempts))

    def download(self, uri: S3Uri, dest_dir: Path) -> builtins.list[Path]:
        """Copy a file or every object under a prefix into `dest_dir`, keeping relative paths.

        A file URI lands as `dest_dir/<name>`. Raises StorageNotFound when nothing matches, and
        UnsafeObjectKey (before any byte is written) when a listed key would land outside `dest_dir`.
        """
        objects = self.list(uri)
        if not objects:
            raise StorageNotFound(f"nothing found at {uri}")
        return self.download_listed(objects, uri, dest_dir)

    def download_listed(
        self,
        objects: builtins.list[ObjectInfo],
        uri: S3Uri,
        dest_dir: Path,
        sha256s: Mapping[str, str] | None = None,
    ) -> builtins.list[Path]:
        """Copy `objects` (listed under `uri`) into `dest_dir`, keeping their paths below `uri`; every key is
        checked (core/paths.py) before the first download starts, so a refused key leaves nothing behind.
        `sha256s`: a manifest's record (object key -> sha256), checked beside each object's own."""
        recorded = sha256s or {}
        targets = [(obj, local_path(obj.uri, uri, dest_dir)) for obj in objects]
        total = sum(o.size for o in objects)
        missing = sum(obj.size for obj, path in targets if not _already_local(path, obj))
        ensure_free_space(missing, str(uri), dest_dir)  # refused with the numbers before the first byte
        log.info("downloading %s: %d object(s), %.1f MiB -> %s", uri, len(objects), total / 2**20, dest_dir)
        started = time.monotonic()
        paths = [self.download_file(obj.uri, path, obj, recorded.get(obj.uri.key)) for obj, path in targets]
        log.info("downloaded %s in %.1fs", uri, time.monotonic() - started)
        return paths

    def read_bytes(self, uri: S3Uri, sha256: str | None = None) -> bytes:
        """The content of one (small) object, verified like a download (`download_file`): read once more when it
        does not match its record, then `ObjectCorrupt`."""
        found: list[str] = []
        attempts = integrity.RETRIES + 1
        for attempt in range(1, attempts + 1):
            response = self._call(uri, "reading", lambda: self.client.get_object(Bucket=uri.bucket, Key=uri.key))
            try:
                body: bytes = self._call(uri, "reading", response["Body"].read)
                expected = integrity.expected_from_head(response, sha256, etag_md5())
                found = integrity.problems(expected, integrity.observe_bytes(body, expected))
            except ObjectCorrupt as error:
                found = [str(error)]
            if not found:
                return body
            INTEGRITY.count(refused=attempt == attempts)
            if attempt < attempts:
                log.warning("%s: the bytes read do not match the object (%s); reading it once more", uri, found)
        raise ObjectCorrupt(integrity.corrupt_message(str(uri), found, attempts))

    def write_bytes(self, uri: S3Uri, data: bytes, content_type: str = "application/octet-stream") -> Uploaded:
        """Write one small object in one PUT, its sha256 recorded in its metadata (a PUT is atomic: the object is
        the old one or the whole new one)."""
        sha = hashlib.sha256(data).hexdigest()
        self._call(
            uri,
            "writing",
            lambda: self.client.put_object(
                Bucket=uri.bucket,
                Key=uri.key,
                Body=data,
                ContentType=content_type,
                Metadata={integrity.SHA256_METADATA: sha},
            ),
        )
        return Uploaded(uri, len(data), sha)

    def upload_file(self, path: Path, uri: S3Uri) -> Uploaded:
        """Upload one local file (multipart for large ones, handled by boto3's transfer manager), its sha256
        recorded in its metadata; then the stored object's size is checked (HEAD), and an upload that did not
        store every byte is made once more, then fails (InternalError, retryable: the bytes are ours)."""
        size = path.stat().st_size
        sha = integrity.sha256_file(path)
        extra = {"Metadata": {integrity.SHA256_METADATA: sha}}
        attempts = integrity.RETRIES + 1
        stored: dict[str, Any] = {}
        for attempt in range(1, attempts + 1):
            progress = _Progress(f"{path} -> {uri}", size)
            put = functools.partial(
                self.client.upload_file, str(path), uri.bucket, uri.key, ExtraArgs=extra, Callback=progress
            )
            self._call(uri, "uploading", put)
            stored = self._head(uri)
            if int(stored.get("ContentLength") or 0) == size:
                if integrity.recorded_sha256(stored.get("Metadata")) != sha:
                    _warn_once_no_metadata(uri)
                return Uploaded(uri, size, sha)
            INTEGRITY.count(refused=attempt == attempts)
            if attempt < attempts:
                log.warning("%s: stored %s bytes of %d; uploading once more", uri, stored.get("ContentLength"), size)
        raise InternalError(
            f"uploading {uri}: the server stored {stored.get('ContentLength')} bytes of {path} ({size} bytes) "
            f"after {attempts} uploads"
        )

    def upload_dir(
        self, local: Path, uri: S3Uri, skip: Callable[[Path], bool] | None = None
    ) -> builtins.list[Uploaded]:
        """Upload every file below `local` under the prefix `uri`, keeping relative paths (not ETag records)."""
        uploaded = []
        for path in local_files(local):
            if skip is not None and skip(path):
                continue
            uploaded.append(self.upload_file(path, uri.join(path.relative_to(local).as_posix())))
        log.info("uploaded %d file(s) from %s to %s", len(uploaded), local, uri)
        return uploaded

    def delete(self, uri: S3Uri) -> None:
        """Delete one object (a missing one is no error: S3's DeleteObject answers 204 either way)."""
        self._call(uri, "deleting", lambda: self.client.delete_object(Bucket=uri.bucket, Key=uri.key))

    def delete_prefix(self, uri: S3Uri) -> int:
        """Delete every object under the folder `uri` (in batches of 1000); returns how many."""
        keys = [o.uri.key for o in self.iter_objects(S3Uri(uri.bucket, uri.prefix))]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call(
                uri,
                "deleting",
                functools.partial(
                    self.client.delete_objects, Bucket=uri.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )
        return len(keys)
