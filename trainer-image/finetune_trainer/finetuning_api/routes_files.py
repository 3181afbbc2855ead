"""OpenAI's Files API (`/v1/files`): upload, list, retrieve, content and delete, in the caller's namespace.

Why this order in every route: authorize first (a SubjectAccessReview on finetunejobs.finetune.dev: files
exist to train, so the rights to fine-tune are the rights to files: `create` to upload, `get`/`list` to read,
`delete` to delete), then read the namespace's credentials Secret as the caller, then touch storage. An upload
is parsed to a temporary file (never memory), refused past `ApiConfig.max_upload_bytes` with 413 before
anything is written to storage, checked with the trainer's readers (upload_check) and written in one PUT with
its status, so a refused or interrupted upload leaves nothing behind and an acknowledged one is stored.
Another namespace's file is not under this namespace's prefix, so it answers 404 like a missing one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from finetune_trainer.finetuning_api import file_store, job_objects, job_view, result_files
from finetune_trainer.finetuning_api.auth import authorize, in_thread
from finetune_trainer.finetuning_api.caller import caller_of
from finetune_trainer.finetuning_api.config import ApiConfig
from finetune_trainer.finetuning_api.errors import ApiError, not_found
from finetune_trainer.finetuning_api.file_objects import FileObjects, files_of
from finetune_trainer.finetuning_api.upload_check import check_file

PURPOSE = "fine-tune"
FORM_OVERHEAD = 64 * 1024
"""Bytes a multipart body may carry beyond the file itself (boundaries, part headers, the purpose field)."""
UPLOAD_FIELDS = frozenset({"file", "purpose"})
LIST_PARAMS = frozenset({"purpose", "limit", "after", "order"})
MAX_LIMIT = 10_000


def _config(request: Request) -> ApiConfig:
    config = request.app.state.config
    assert isinstance(config, ApiConfig)
    return config


async def _objects(request: Request, verb: str) -> FileObjects:
    """Authorize `verb` on finetunejobs for the caller, then open the namespace's files with its credentials."""
    caller = caller_of(request)
    config = _config(request)
    kube = request.app.state.kube()
    await in_thread(lambda: authorize(kube.service, caller, verb))
    objects: FileObjects = await in_thread(lambda: files_of(config, caller))
    return objects


def _file_id(request: Request) -> str:
    file_id = str(request.path_params["file_id"])
    if result_files.is_result_file_id(file_id):
        return file_id
    try:
        return file_store.check_file_id(file_id)
    except file_store.BadName:
        raise not_found("file", file_id) from None


def _too_large(config: ApiConfig) -> ApiError:
    return ApiError(
        413,
        f"the file is larger than this service's limit of {config.max_upload_bytes} bytes "
        "(api.files.maxUploadBytes): split it, or ask the operator of the service to raise the limit",
        param="file",
        code="file_too_large",
    )


async def _limited(request: Request, limit: int, config: ApiConfig) -> AsyncGenerator[bytes, None]:
    """The request body, refused with 413 as soon as it passes `limit` bytes (also without Content-Length)."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(config)
        yield chunk


async def upload(request: Request) -> Response:
    config = _config(request)
    declared = request.headers.get("content-length")
    limit = config.max_upload_bytes + FORM_OVERHEAD
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(config)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the file as multipart/form-data with fields file and purpose", param="file")
    objects = await _objects(request, "create")
    parser = MultiPartParser(request.headers, _limited(request, limit, config), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ApiError(400, f"bad multipart body: {error.message}", param="file") from None
    try:
        unknown = sorted(set(form.keys()) - UPLOAD_FIELDS)
        if unknown:
            raise ApiError(
                400,
                f"unsupported field(s) {', '.join(unknown)}: this service takes file and purpose only "
                "(files do not expire here; delete them instead)",
                param=unknown[0],
            )
        purpose = form.get("purpose")
        if purpose != PURPOSE:
            raise ApiError(
                400,
                f"purpose {purpose!r} is not supported: this service stores only purpose='fine-tune' files",
                param="purpose",
            )
        upload_file = form.get("file")
        if not isinstance(upload_file, UploadFile):
            raise ApiError(400, "missing the file field (a multipart file part)", param="file")
        size = upload_file.size or 0
        if size > config.max_upload_bytes:
            raise _too_large(config)
        filename = Path(upload_file.filename or "file.jsonl").name
        stored = await in_thread(lambda: _check_and_store(objects, upload_file, filename))
    finally:
        await form.close()
    return JSONResponse(stored)


def _check_and_store(objects: FileObjects, upload_file: UploadFile, filename: str) -> dict[str, Any]:
    """Copy the upload to a named temporary file, check it with the trainer's readers, store it with its status."""
    file_id = file_store.new_file_id()
    with tempfile.TemporaryDirectory(prefix="fto-upload-") as folder:
        path = Path(folder) / "upload.jsonl"
        upload_file.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(upload_file.file, out, 1 << 20)
        checked = check_file(path, filename)
        with path.open("rb") as body:
            objects.put(file_id, body, filename, checked.status, checked.details)
    return objects.head(file_id).openai()


async def list_files(request: Request) -> Response:
    params = request.query_params
    unknown = sorted(set(params.keys()) - LIST_PARAMS)
    if unknown:
        raise ApiError(400, f"unsupported query parameter(s) {', '.join(unknown)}", param=unknown[0])
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order {order!r} must be asc or desc", param="order")
    raw_limit = params.get("limit", str(MAX_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise ApiError(400, f"limit {raw_limit!r} must be an integer from 1 to {MAX_LIMIT}", param="limit")
    limit = int(raw_limit)
    after = params.get("after")
    purpose = params.get("purpose")
    objects = await _objects(request, "list")
    ids = [] if purpose not in (None, PURPOSE) else await in_thread(objects.ids)
    if order == "desc":
        ids.reverse()
    if after:
        ids = ids[ids.index(after) + 1 :] if after in ids else _after(ids, after, order)
    page, has_more = ids[:limit], len(ids) > limit
    items = [stored.openai() for stored in await in_thread(lambda: objects.heads(page))]
    return JSONResponse(
        {
            "object": "list",
            "data": items,
            "has_more": has_more,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
        }
    )


def _after(ids: list[str], after: str, order: str) -> list[str]:
    """Ids past a cursor that is no longer listed (deleted meanwhile): ids sort by creation, so compare them."""
    return [i for i in ids if (i > after if order == "asc" else i < after)]


def _result(request: Request, objects: FileObjects, file_id: str) -> tuple[dict[str, Any], bytes]:
    """A job's result file (result_files.py): the job read as the caller (404 for another namespace's, for one
    not succeeded or whose current run is another), then its run's metrics.json with the namespace's
    credentials, from the folder the API gave the job (never a path from the status)."""
    job_id, run = result_files.parse_result_file_id(file_id) or ("", 0)
    config = _config(request)
    try:
        obj = job_objects.get_job(caller_of(request), job_id)
    except ApiError as error:
        if error.status == 404:
            raise not_found("file", file_id) from None
        raise
    if (
        file_id not in job_view.to_openai_job(obj)["result_files"]
        or result_files.offered_run(obj, config.bucket) != run
    ):
        raise not_found("file", file_id)
    raw, modified = objects.read_object(result_files.metrics_key(objects.namespace, job_id, run), file_id)
    try:
        document = json.loads(raw)
    except ValueError:
        raise ApiError(
            502, f"the run's metrics.json of {job_id} is not JSON: its result file cannot be built"
        ) from None
    data = result_files.step_metrics_csv(document)
    described = {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": modified,
        "filename": result_files.FILENAME,
        "purpose": result_files.PURPOSE,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }
    return described, data


async def retrieve(request: Request) -> Response:
    file_id = _file_id(request)
    objects = await _objects(request, "get")
    if result_files.is_result_file_id(file_id):
        described, _data = await in_thread(lambda: _result(request, objects, file_id))
        return JSONResponse(described)
    return JSONResponse((await in_thread(lambda: objects.head(file_id))).openai())


async def content(request: Request) -> Response:
    file_id = _file_id(request)
    objects = await _objects(request, "get")
    if result_files.is_result_file_id(file_id):
        _described, data = await in_thread(lambda: _result(request, objects, file_id))
        disposition = f'attachment; filename="{result_files.FILENAME}"'
        return Response(data, media_type="text/csv", headers={"Content-Disposition": disposition})
    stored = await in_thread(lambda: objects.head(file_id))
    chunks = await in_thread(lambda: objects.chunks(file_id))
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{file_id}.jsonl"', "Content-Length": str(stored.bytes)},
    )


async def delete(request: Request) -> Response:
    file_id = _file_id(request)
    if result_files.is_result_file_id(file_id):
        raise ApiError(
            400,
            f"{file_id} is a job's result file, built from its run's metrics (which its report and gate use): it "
            "cannot be deleted on its own; delete the job with kubectl delete ftj",
            param="file_id",
            code="invalid_request",
        )
    objects = await _objects(request, "delete")
    await in_thread(lambda: objects.delete(file_id))
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
    ]
