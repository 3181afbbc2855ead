"""Hugging Face Hub sources (`hf://org/name`, `hf://datasets/org/name[/path]`): resolve, verify, copy to S3.

Why here, in the CPU-only Validating step, and nowhere else: training and serving pods read object storage only
(they run with HF_HUB_OFFLINE=1 and never reach a hub); this module resolves a revision (branch, tag or commit)
to its commit once, copies the files of that commit into the object-storage cache keyed by repo and commit
(`<cache>/<kind>s/<org>/<name>/<commit>/<path>`), and every later pod reads that copy. A resumed or repeated run
uses the commit recorded by the first resolution, so a moved branch never changes it.

Integrity: the hub's tree listing gives each file's size and either its LFS sha256 or its git blob id (the
sha1 of `blob <size>\\0<content>`); each downloaded file is checked against both before it is uploaded, and a
file that differs is never copied. The cache's record of a commit (`<cache>/<kind>s/<org>/<name>/<commit>
.manifest.json`, the trainer's manifest format, core/manifest.py) lists each copied file with its size and
sha256; it is written after the files, so a file it names is complete, and a second run of the same commit
copies only what it lacks: nothing.

Errors: an unknown repo or revision, a refused or missing token (401/403, gated repos) are user errors naming
the repo, the revision and the fix (exit 42, no retry); a hub that cannot be reached or answers 5xx is
`HubUnavailable` (retryable, an infrastructure failure). The token comes from the source's own variable
(`FIELD_TOKEN_ENV`: the operator sets it from the source's `tokenSecret`, on the Validating pod only) or
`HF_TOKEN`, and is sent only to the configured endpoint (`HF_ENDPOINT`), as huggingface_hub's bearer token; it
is never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from finetune_trainer.core import integrity, manifest
from finetune_trainer.core.disk import ensure_free_space
from finetune_trainer.core.errors import (
    ConfigInvalid,
    DatasetNotFound,
    HubAccessDenied,
    HubUnavailable,
    InsufficientDisk,
    ModelInvalid,
    ModelNotFound,
    StorageNotFound,
    is_disk_full,
)
from finetune_trainer.core.paths import relative_path
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage

log = logging.getLogger(__name__)

SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_ENV = "HF_TOKEN"
ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_REVISION = "main"
_CHUNK = 8 * 2**20

Kind = Literal["model", "dataset"]


@dataclass(frozen=True)
class HubRef:
    """A parsed `hf://` URI: the repo (`org/name`), its kind, and a path inside it ('' for the whole repo)."""

    kind: Kind
    repo: str
    path: str

    def describe(self, revision: str) -> str:
        what = "dataset" if self.kind == "dataset" else "model"
        return f"{what} repo {self.repo!r} at revision {revision!r}"


def is_hub_uri(uri: str) -> bool:
    return uri.startswith(SCHEME)


def parse(uri: str, field: str) -> HubRef:
    """`hf://org/name` (a model) or `hf://datasets/org/name[/path]`; anything else is ConfigInvalid naming `field`."""
    rest = uri[len(SCHEME) :] if is_hub_uri(uri) else ""
    parts = rest.split("/")
    kind: Kind = "model"
    if parts[0] == "datasets":
        kind, parts = "dataset", parts[1:]
    elif parts[0] == "models":
        parts = parts[1:]
    inner = parts[2:-1] if len(parts) > 2 and parts[-1] == "" else parts[2:]  # a trailing '/' names a folder
    if len(parts) < 2 or not all(parts[:2]) or any(p in ("", ".", "..") for p in (*parts[:2], *inner)):
        raise ConfigInvalid(
            f"{field}: {uri!r} is not a Hub URI (hf://<org>/<name> for a model, "
            "hf://datasets/<org>/<name>[/<path>] for a dataset; no empty, '.' or '..' segment)"
        )
    path = "/".join(parts[2:])
    if kind == "model" and path:
        raise ConfigInvalid(f"{field}: {uri!r}: a model is a whole repo (hf://<org>/<name>), not a path inside one")
    return HubRef(kind, f"{parts[0]}/{parts[1]}", path)


@dataclass(frozen=True)
class HubFile:
    """One file of a commit as the hub lists it: its size and what its content must hash to."""

    path: str
    size: int
    blob_id: str
    """The git blob id: sha1 of `blob <size>\\0<content>` (checked when the file is not in LFS)."""
    sha256: str | None
    """The LFS object's sha256 (None for a file stored in git itself)."""


@dataclass(frozen=True)
class Resolved:
    ref: HubRef
    revision: str
    commit: str
    files: tuple[HubFile, ...]


def endpoint() -> str:
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


FIELD_TOKEN_ENV = {
    "baseModel.uri": "FTO_HF_TOKEN_BASE_MODEL",
    "dataset.train.uri": "FTO_HF_TOKEN_TRAIN",
    "dataset.validation.uri": "FTO_HF_TOKEN_VALIDATION",
    "dataset.test.uri": "FTO_HF_TOKEN_TEST",
}
"""Each source's token variable, set by the operator from that source's tokenSecret (its HUB_TOKEN_ENV)."""


def token(field: str | None = None) -> str | None:
    """The token for a source: its own variable (the operator sets it from the source's tokenSecret), else
    HF_TOKEN (a run by hand), else none."""
    own = os.environ.get(FIELD_TOKEN_ENV[field], "") if field in FIELD_TOKEN_ENV else ""
    return own or os.environ.get(TOKEN_ENV) or None


@contextlib.contextmanager
def _online() -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; the pod keeps it set (no other library may reach a
    hub), and only this module's explicit calls, to the configured endpoint, are let through while they run."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _fix_token(ref: HubRef, revision: str) -> str:
    return (
        f"the hub at {endpoint()} refused access to the {ref.describe(revision)}: a gated or private repo needs a "
        "token of an account that was granted access. Put the token (read scope) in a Secret and name it in "
        "tokenSecret (name and key); if tokenSecret is set, the token is wrong or expired, or the account has not "
        "accepted the repo's conditions on the hub"
    )


def classify(error: BaseException, ref: HubRef, revision: str, *, revision_known: bool | None = None) -> Exception:
    """The contract error of a huggingface_hub failure (pure, for tests): user errors name the repo, the revision
    and the fix; an unreachable hub or a 5xx is HubUnavailable (retryable). `revision_known`: whether the repo
    itself answers at its default revision (tells an unknown revision from an unknown repo where a server
    answers both alike)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    missing = DatasetNotFound if ref.kind == "dataset" else ModelNotFound
    status = _status(error)
    if isinstance(error, GatedRepoError):
        return HubAccessDenied(_fix_token(ref, revision))
    if isinstance(error, RevisionNotFoundError) or (
        isinstance(error, RepositoryNotFoundError) and revision_known is True
    ):
        return missing(
            f"the hub at {endpoint()} has no revision {revision!r} in {ref.kind} repo {ref.repo!r}: "
            "set revision to an existing branch, tag or full commit hash of the repo"
        )
    if isinstance(error, RepositoryNotFoundError):
        hint = "" if token() else "; if the repo is private or gated, set tokenSecret to a Secret with a token"
        return missing(
            f"the hub at {endpoint()} has no {ref.kind} repo {ref.repo!r} (revision {revision!r}): check the name "
            f"in the hf:// URI (hf://{'datasets/' if ref.kind == 'dataset' else ''}<org>/<name>){hint}"
        )
    if status in (401, 403):
        return HubAccessDenied(_fix_token(ref, revision))
    if status is not None and status >= 500:
        return HubUnavailable(f"the hub at {endpoint()} answered {status} for the {ref.describe(revision)}: {error}")
    if isinstance(error, HfHubHTTPError) and status is not None:
        return missing(f"the hub at {endpoint()} refused the {ref.describe(revision)} ({status}): {error}")
    if isinstance(error, OfflineModeIsEnabled | ConnectionError | TimeoutError | OSError) or _is_transport(error):
        return HubUnavailable(f"the hub at {endpoint()} cannot be reached for the {ref.describe(revision)}: {error}")
    return error if isinstance(error, Exception) else RuntimeError(str(error))


def _is_transport(error: BaseException) -> bool:
    """An HTTP client's connect/read/timeout error (httpx or a fork of it: matched by module, not imported)."""
    return any(c.__module__.split(".")[0].startswith("httpx") for c in type(error).__mro__) and not _status(error)


class Hub:
    """The configured endpoint and token, and the three requests this module makes: resolve, list, download."""

    def __init__(self, endpoint_url: str | None = None, token_value: str | None = None) -> None:
        from huggingface_hub import HfApi

        self.endpoint = endpoint_url or endpoint()
        self.token: str | bool = token_value or token() or False  # False: never a token from a local login
        self.api = HfApi(endpoint=self.endpoint, token=self.token)

    def _info(self, ref: HubRef, revision: str | None) -> Any:
        return self.api.repo_info(ref.repo, repo_type=ref.kind, revision=revision)

    def resolve(self, ref: HubRef, revision: str | None) -> Resolved:
        """The commit `revision` names now, and that commit's files; the contract errors of `classify`."""
        from huggingface_hub.hf_api import RepoFile

        wanted = revision or DEFAULT_REVISION
        with _online():
            try:
                info = self._info(ref, wanted)
                tree = self.api.list_repo_tree(ref.repo, repo_type=ref.kind, revision=info.sha, recursive=True)
                files = tuple(
                    HubFile(entry.path, int(entry.size), entry.blob_id, entry.lfs.sha256 if entry.lfs else None)
                    for entry in tree
                    if isinstance(entry, RepoFile)
                )
            except Exception as error:
                raise self._classified(error, ref, wanted) from None
        log.info("resolved %s to commit %s (%d files)", ref.describe(wanted), info.sha, len(files))
        return Resolved(ref, wanted, str(info.sha), files)

    def _classified(self, error: Exception, ref: HubRef, revision: str) -> Exception:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        known = None
        if (
            isinstance(error, RepositoryNotFoundError)
            and not isinstance(error, RevisionNotFoundError)
            and revision != DEFAULT_REVISION
        ):
            try:  # an unknown revision of a known repo: some servers (olah) answer it as an unknown repo
                self._info(ref, DEFAULT_REVISION)
                known = True
            except Exception:  # the first error is the one reported
                known = False
        return classify(error, ref, revision, revision_known=known)

    def download(self, resolved: Resolved, file: HubFile, folder: Path) -> Path:
        """One file of the commit into `folder` (huggingface_hub's download, to that folder, no hub cache)."""
        from huggingface_hub import hf_hub_download

        with _online():
            try:
                path = hf_hub_download(
                    resolved.ref.repo,
                    file.path,
                    repo_type=resolved.ref.kind,
                    revision=resolved.commit,
                    local_dir=folder,
                    endpoint=self.endpoint,
                    token=self.token,
                )
            except Exception as error:
                if is_disk_full(error):  # checked free before (mirror): the node's disk filled up meanwhile
                    raise InsufficientDisk(
                        f"the validation pod's disk filled up while downloading {file.path} "
                        f"({file.size / 2**20:.1f} MiB) of the {resolved.ref.describe(resolved.revision)} "
                        f"(commit {resolved.commit}): {error}. The free space was checked before the download, so "
                        "other pods on the node wrote to its disk meanwhile; the validation is retried (nothing "
                        "half-copied is kept)"
                    ) from None
                raise classify(error, resolved.ref, resolved.revision) from None
        return Path(path)


def git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, file: HubFile, where: str) -> str:
    """The file's sha256 once its size and its LFS sha256 or git blob id match the hub's listing; else
    HubUnavailable (a transfer that went wrong is retried; the file is never copied)."""
    size = path.stat().st_size
    sha = integrity.sha256_file(path)
    if size != file.size:
        problem = f"{size} bytes, the hub lists {file.size}"
    elif file.sha256 is not None and sha != file.sha256:
        problem = f"sha256 {sha}, the hub lists {file.sha256}"
    elif file.sha256 is None and git_blob_id(path) != file.blob_id:
        problem = f"a git blob id other than the hub's {file.blob_id}"
    else:
        return sha
    raise HubUnavailable(f"{where}{file.path}: the downloaded file has {problem}; not copied")


def cache_folder(cache: S3Uri, resolved: Resolved) -> S3Uri:
    """`<cache>/<kind>s/<org>/<name>/<commit>/`: where the commit's files are copied."""
    prefix = cache.prefix if not cache.prefix or cache.prefix.endswith("/") else cache.prefix + "/"
    return S3Uri(cache.bucket, f"{prefix}{resolved.ref.kind}s/{resolved.ref.repo}/{resolved.commit}/")


def _record_uri(folder: S3Uri) -> S3Uri:
    return S3Uri(folder.bucket, folder.key.rstrip("/") + ".manifest.json")


@dataclass(frozen=True)
class Copied:
    """What one `mirror` call copied (0 files on a cache hit) and where the commit's files are."""

    folder: S3Uri
    files: int
    bytes: int


def cached_entries(storage: Storage, folder: S3Uri) -> dict[str, manifest.FileEntry]:
    record = _record_uri(folder)
    if not storage.exists(record):
        return {}
    return manifest.parse(storage.read_bytes(record), str(folder))


def pending(storage: Storage, cache: S3Uri, resolved: Resolved, files: Sequence[HubFile]) -> list[HubFile]:
    """The files of `files` the cache's record of the commit lacks (or names with another size): what a copy
    downloads."""
    entries = cached_entries(storage, cache_folder(cache, resolved))
    return [f for f in files if f.path not in entries or entries[f.path].size != f.size]


def where_of(resolved: Resolved) -> str:
    """`hf://[datasets/]org/name@commit/`: how messages name a file of the commit."""
    return f"hf://{'datasets/' if resolved.ref.kind == 'dataset' else ''}{resolved.ref.repo}@{resolved.commit}/"


def ensure_room(copies: Sequence[tuple[Resolved, Sequence[HubFile]]], work: Path) -> None:
    """Before the first download: the largest file still to copy must fit the free space of the validation
    pod's disk (files are downloaded one at a time and deleted once uploaded). Too little is InsufficientDisk,
    retryable: the validation pod asks for no disk of its own, so the space is the node's."""
    largest = max(((r, f) for r, files in copies for f in files), key=lambda rf: rf[1].size, default=None)
    if largest is None:
        return
    resolved, file = largest
    what = f"{where_of(resolved)}{file.path} (revision {resolved.revision!r}), the largest file to copy"
    ensure_free_space(file.size, what, work / "hub-download")


def mirror(
    hub: Hub,
    resolved: Resolved,
    files: Sequence[HubFile],
    storage: Storage,
    cache: S3Uri,
    work: Path,
    on_copy: Callable[[HubFile], None] | None = None,
) -> Copied:
    """Copy `files` of the commit to the cache, one at a time (downloaded, verified, uploaded, deleted), skipping
    those the cache's record already names with the same size; then rewrite the record with them all."""
    folder = cache_folder(cache, resolved)
    where = where_of(resolved)
    entries = cached_entries(storage, folder)
    wanted = [f for f in files if f.path not in entries or entries[f.path].size != f.size]
    copied = 0
    scratch = work / "hub-download"
    for file in wanted:
        relative_path(file.path, key=file.path, prefix=where)  # a listed name that would leave the folder: refused
        ensure_free_space(file.size, f"{where}{file.path}", scratch)
        try:  # the scratch folder goes, whatever happens: a partial download (ENOSPC) must not stay on the disk
            path = hub.download(resolved, file, scratch)
            sha = verify(path, file, where)
            storage.upload_file(path, S3Uri(folder.bucket, folder.key + file.path))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        entries[file.path] = manifest.FileEntry(file.size, sha)
        copied += file.size
        if on_copy is not None:
            on_copy(file)
    if wanted:
        document = {
            "version": manifest.VERSION,
            "files": {name: {"size": e.size, "sha256": e.sha256} for name, e in sorted(entries.items())},
        }
        storage.write_bytes(_record_uri(folder), json.dumps(document, indent=2).encode(), "application/json")
    log.info(
        "%s: %d file(s) copied to %s (%.1f MiB), %d already there",
        where,
        len(wanted),
        folder,
        copied / 2**20,
        len(files) - len(wanted),
    )
    return Copied(folder, len(wanted), copied)


WEIGHT_SUFFIXES = (".safetensors",)
SKIPPED_MODEL_FILES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data", ".gguf", ".ot")
"""Other weight formats a model repo may also hold: not copied (the trainer loads safetensors only)."""


def model_files(resolved: Resolved) -> tuple[list[HubFile], list[HubFile]]:
    """(the files the Validating step needs before the memory plan: config, tokenizer, chat template;
    the safetensors weights and their index). A repo without safetensors weights is ModelInvalid."""
    kept = [
        f
        for f in resolved.files
        if not f.path.endswith(SKIPPED_MODEL_FILES)
        and not f.path.startswith(("onnx/", "original/", "openvino/"))
        and PurePosixPath(f.path).name not in (".gitattributes",)
    ]
    weights = [f for f in kept if f.path.endswith(WEIGHT_SUFFIXES) and "/" not in f.path]
    if not weights:
        others = sorted({PurePosixPath(f.path).suffix for f in resolved.files if f.path.endswith(SKIPPED_MODEL_FILES)})
        found = f" (it has {', '.join(others)} weights only)" if others else ""
        raise ModelInvalid(
            f"the {resolved.ref.describe(resolved.revision)} (commit {resolved.commit}) has no safetensors "
            f"weights{found}: the trainer loads *.safetensors only; pick a revision or a repo that has them"
        )
    if not any(f.path == "config.json" for f in kept):
        raise ModelInvalid(
            f"the {resolved.ref.describe(resolved.revision)} (commit {resolved.commit}) is not a Hugging Face "
            "model: it has no config.json"
        )
    return [f for f in kept if f not in weights], weights


def files_under(resolved: Resolved, path: str, field: str) -> list[HubFile]:
    """The files a dataset URI's path names: one file, a folder (`data/`), or a key prefix (`data/train-`), as
    for an s3:// URI; the README (dataset card) is always kept. None found is DatasetNotFound."""
    if not path:
        found = [f for f in resolved.files if f.path != ".gitattributes"]
    else:
        found = [f for f in resolved.files if f.path == path or f.path.startswith(path)]
    if not found:
        raise DatasetNotFound(
            f"{field}: the {resolved.ref.describe(resolved.revision)} (commit {resolved.commit}) has no file at or "
            f"under {path!r}"
        )
    return found


def require_cached(storage: Storage, folder: S3Uri, what: str) -> None:
    """The training side: the commit's copy must be in the cache (validation made it); else StorageNotFound."""
    if not cached_entries(storage, folder):
        raise StorageNotFound(f"{what}: no cached copy at {folder} (the Validating step copies it)")
