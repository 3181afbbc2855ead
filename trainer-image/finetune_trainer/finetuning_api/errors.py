"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the HTTP status OpenAI uses, so
the official client raises its own typed exception (BadRequestError, AuthenticationError, PermissionDeniedError,
NotFoundError, ...) with the message and the param it names.

Why one home: every route refuses bad input by raising `ApiError`; the app turns it into a response in one
place, so no route builds an error body of its own.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """A refusal: the status, the message (what is wrong and the fix), the request field it names, a code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, dict[str, str | None]]:
        kind = TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    """OpenAI's answer for an object that does not exist, and for one in a namespace the caller may not see
    (another tenant's file, job or model is indistinguishable from a missing one)."""
    return ApiError(404, f"No such {what}: {ident}", param=param, code=None)


async def api_error_handler(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status)
