"""OpenAI's Files API (`/v1/files`): upload, list, retrieve, content, delete, in the caller's namespace."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
