"""JSON request bodies with a size limit: a job's create request and the inference bodies the proxy forwards.

Why a limit before parsing: the body is held in memory to parse it, so without one any authenticated caller
could make an API pod hold as much as it sends. Past the limit the answer is 413 naming `body`, before the
rest is read.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from finetune_trainer.finetuning_api.errors import ApiError

JOB_BODY_LIMIT = 1 << 20
"""A create request is a few hundred bytes; 1 MiB leaves room for 16 metadata pairs many times over."""
INFERENCE_BODY_LIMIT = 64 << 20
"""The largest body a model server accepts (its serve.json maxBodyBytes is at most 64 MiB); the server applies
its own, usually smaller, limit to what is forwarded."""


async def read_json(request: Request, limit: int) -> Any:
    """The parsed JSON body, or 413 past `limit` bytes (declared or streamed), 400 when it is not JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ApiError(400, "the request body must be JSON", param="body", code="invalid_json") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", param="body", code="request_too_large")
