"""Uploaded files in object storage: bytes and metadata of one object per file, written and read with the
namespace's own storage credentials, which are read as the caller.

Why the Secret is read through the caller's impersonating client: only a caller whose RBAC lets them read the
namespace's credentials Secret (`ApiConfig.credentials_secret`) can make the service use it; the service's
own ServiceAccount cannot read any Secret. Why the metadata (filename, status, its details, schema) sits in
the object's own S3 metadata: one PUT writes a file and everything said about it, so there is no second object
to leave behind, and nothing is kept in the service's memory. Metadata values are percent-encoded (S3
metadata is ASCII) and the details cut to `DETAILS_LIMIT` (S3 allows 2 KiB of metadata per object). The
file's sha256 is in it too (`fto-sha256`, core/integrity.py): the trainer checks its copy of the file by it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote, unquote

from finetune_trainer.core import integrity
from finetune_trainer.core.integrity import SHA256_METADATA
from finetune_trainer.finetuning_api import file_store
from finetune_trainer.finetuning_api.caller import Caller
from finetune_trainer.finetuning_api.config import ApiConfig
from finetune_trainer.finetuning_api.errors import ApiError, not_found

log = logging.getLogger(__name__)

DETAILS_LIMIT = 1200
KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class StoredFile:
    """One file as OpenAI's FileObject describes it."""

    id: str
    filename: str
    bytes: int
    created_at: int
    status: str
    status_details: str | None

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": "fine-tune",
            "status": self.status,
            "status_details": self.status_details,
            "expires_at": None,
        }


def credentials(config: ApiConfig, caller: Caller) -> tuple[str, str]:
    """The namespace's storage keys, read from its Secret as the caller (403 without RBAC, 400 when absent)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = config.credentials_secret
    try:
        secret = client.CoreV1Api(caller.api_client).read_namespaced_secret(name, caller.namespace)
    except ApiException as error:
        if error.status == 403:
            raise ApiError(
                403,
                f"{caller.username} may not get Secret {name} in namespace {caller.namespace}, which holds the "
                "namespace's storage credentials: ask for a Role granting get on it (docs/openai-api.md)",
                code="permission_denied",
            ) from None
        if error.status == 404:
            raise ApiError(
                400,
                f"namespace {caller.namespace} has no Secret {name} with {' and '.join(KEYS)}: create it "
                "(docs/openai-api.md) before uploading files",
                code="storage_not_configured",
            ) from None
        raise
    data = secret.data or {}
    missing = [key for key in KEYS if not data.get(key)]
    if missing:
        raise ApiError(
            400,
            f"Secret {name} in namespace {caller.namespace} lacks {', '.join(missing)}",
            code="storage_not_configured",
        )
    access, secret_key = (base64.b64decode(data[key]).decode() for key in KEYS)
    return access, secret_key


_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def s3_client(config: ApiConfig, keys: tuple[str, str]) -> Any:
    """A boto3 S3 client for the files store with the namespace's keys (path-style, as core/storage.py).

    Made from one shared boto3 Session, under a lock (a Session is not thread-safe; the clients are): a fresh
    Session per request would load botocore's service model again each time. The keys are the request's own."""
    global _SESSION
    import boto3
    from botocore.config import Config

    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client(
            "s3",
            endpoint_url=config.s3_endpoint or None,
            region_name=config.s3_region,
            aws_access_key_id=keys[0],
            aws_secret_access_key=keys[1],
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
        )


def files_of(config: ApiConfig, caller: Caller) -> FileObjects:
    """The caller's namespace's files, opened with its credentials read as the caller (blocking: run it in a
    thread). For the jobs side too: `files_of(config, caller).head(file_id)` is 404 for another namespace's file
    and tells `status` (a job may train only on a `processed` file)."""
    return FileObjects(config, caller.namespace, s3_client(config, credentials(config, caller)))


def _sha256(body: IO[bytes]) -> str:
    """The sha256 (hex) of a seekable body, read from the start; the body is left at its start for the upload."""
    digest = hashlib.sha256()
    body.seek(0)
    while chunk := body.read(1 << 20):
        digest.update(chunk)
    body.seek(0)
    return digest.hexdigest()


def _storage_error(error: Exception, key: str, action: str) -> ApiError:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    log.warning("storage %s of %s failed: %s", action, key, error)
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return ApiError(
            403,
            f"the namespace's storage credentials may not {action} this file's object: check its Secret",
            code="storage_access_denied",
        )
    return ApiError(502, f"object storage failed to {action} the file ({code or type(error).__name__}): try again")


class FileObjects:
    """The files of one namespace: `<namespace>/files/<id>.jsonl` objects of `config.bucket`."""

    def __init__(self, config: ApiConfig, namespace: str, client: Any) -> None:
        self.config = config
        self.namespace = namespace
        self.client = client

    def put(self, file_id: str, body: IO[bytes], filename: str, status: str, details: str | None) -> None:
        key = file_store.object_key(self.namespace, file_id)
        # the sha256 the trainer checks its download of the file against (core/integrity.py)
        metadata = {"filename": quote(filename, safe=""), "status": status, SHA256_METADATA: _sha256(body)}
        if details:
            metadata["status-details"] = quote(details[:DETAILS_LIMIT], safe="")
        try:
            self.client.upload_fileobj(
                body,
                self.config.bucket,
                key,
                ExtraArgs={"Metadata": metadata, "ContentType": "application/jsonl"},
            )
        except Exception as error:
            raise _storage_error(error, key, "write") from error

    def head(self, file_id: str) -> StoredFile:
        key = file_store.object_key(self.namespace, file_id)
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=key)
        except Exception as error:
            if _status(error) == 404:
                raise not_found("file", file_id) from None
            raise _storage_error(error, key, "read") from error
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        details = meta.get("status-details")
        return StoredFile(
            id=file_id,
            filename=unquote(meta.get("filename", file_id + file_store.SUFFIX)),
            bytes=int(head.get("ContentLength", 0)),
            created_at=file_store.created_at(file_id),
            status=meta.get("status", "processed"),
            status_details=unquote(details) if details else None,
        )

    def heads(self, file_ids: list[str], workers: int = 16) -> list[StoredFile]:
        """The metadata of several files, read in parallel (one HEAD each); a file deleted meanwhile is left out."""

        def one(file_id: str) -> StoredFile | None:
            try:
                return self.head(file_id)
            except ApiError as error:
                if error.status == 404:
                    return None
                raise

        if not file_ids:
            return []
        with ThreadPoolExecutor(max_workers=min(workers, len(file_ids))) as pool:
            return [stored for stored in pool.map(one, file_ids) if stored is not None]

    def ids(self) -> list[str]:
        """Every file id of the namespace, oldest first (keys sort by creation time: file_store)."""
        found: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = file_store.folder(self.namespace)
        try:
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    file_id = file_store.file_id_of_key(self.namespace, item["Key"])
                    if file_id:
                        found.append(file_id)
        except Exception as error:
            raise _storage_error(error, prefix, "list") from error
        return sorted(found)

    def chunks(self, file_id: str, size: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes, streamed (404 before the first byte when it does not exist)."""
        key = file_store.object_key(self.namespace, file_id)
        try:
            body = self.client.get_object(Bucket=self.config.bucket, Key=key)["Body"]
        except Exception as error:
            if _status(error) == 404:
                raise not_found("file", file_id) from None
            raise _storage_error(error, key, "read") from error
        return _iterate(body, size)

    def read_object(self, key: str, what: str, limit: int = 64 << 20) -> tuple[bytes, int]:
        """A small object of the namespace's bucket (a run's metrics.json) and its last-modified time (Unix
        seconds); 404 naming `what` when it is not there, 502 past `limit` bytes, and 502 when its bytes do not
        match the size and sha256 the trainer recorded with it (core/integrity.py) twice in a row."""
        found: list[str] = []
        for _ in range(integrity.RETRIES + 1):
            try:
                got = self.client.get_object(Bucket=self.config.bucket, Key=key)
            except Exception as error:
                if _status(error) == 404:
                    raise not_found("file", what) from None
                raise _storage_error(error, key, "read") from error
            body = got["Body"]
            try:
                data = body.read(limit + 1)
            finally:
                body.close()
            if len(data) > limit:
                raise ApiError(502, f"{key} is larger than {limit} bytes: not read")
            expected = integrity.expected_from_head(got, etag_md5=self.config.s3_etag_md5)
            found = integrity.problems(expected, integrity.observe_bytes(data, expected))
            if not found:
                modified = got.get("LastModified")
                return data, int(modified.timestamp()) if modified is not None else 0
            log.warning("%s: the bytes read do not match the object (%s)", key, "; ".join(found))
        raise ApiError(
            502,
            integrity.corrupt_message(f"s3://{self.config.bucket}/{key}", found, integrity.RETRIES + 1),
            code="object_corrupt",
        )

    def delete(self, file_id: str) -> None:
        self.head(file_id)  # 404 for a file that is not there
        key = file_store.object_key(self.namespace, file_id)
        try:
            self.client.delete_object(Bucket=self.config.bucket, Key=key)
        except Exception as error:
            raise _storage_error(error, key, "delete") from error


def _iterate(body: Any, size: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(size)
    finally:
        body.close()


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code in ("404", "NoSuchKey", "NotFound"):
        return 404
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status else None
