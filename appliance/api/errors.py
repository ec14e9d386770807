"""Every failure leaves as `{"error": code, "detail": text}` with a fitting status; internals
(stack traces, SQL, URLs with credentials) never reach the client."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from appliance.database import DB_ERRORS
from appliance.errors import AppError, ServiceUnavailableError

log = logging.getLogger(__name__)
AnyRequest = Request[Any, Any, Any]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> Response[dict[str, str]]:
    return Response({"error": code, "detail": detail}, status_code=status, headers=headers)


def app_error(_: AnyRequest, exc: AppError) -> Response[dict[str, str]]:
    headers = None
    if isinstance(exc, ServiceUnavailableError):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return error_response(exc.status_code, exc.code, exc.detail, headers)


def validation_error(_: AnyRequest, exc: ValidationException) -> Response[dict[str, str]]:
    problems = "; ".join(
        f"{e.get('key', 'body')}: {e.get('message', 'invalid')}"
        for e in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(e, dict)
    )
    return error_response(400, "invalid_request", problems or str(exc.detail))


def http_error(_: AnyRequest, exc: HTTPException) -> Response[dict[str, str]]:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = str(exc.detail)
    if exc.status_code == 413:
        detail = "The request body is larger than this appliance accepts (RAIOX_MAX_UPLOAD_BYTES)."
    return error_response(exc.status_code, code, detail, exc.headers)


def database_down(_: AnyRequest, exc: Exception) -> Response[dict[str, str]]:
    log.error("database unavailable: %s", type(exc).__name__)
    return error_response(
        503,
        "database_unavailable",
        "The database is not answering; nothing was lost, retry in a moment.",
        {"Retry-After": "5"},
    )


def os_error(request: AnyRequest, exc: Exception) -> Response[dict[str, str]]:
    """A refused or vanished database socket surfaces as a plain OSError from asyncpg."""
    if raised_by_database_driver(exc):
        return database_down(request, exc)
    return internal_error(request, exc)


def raised_by_database_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if "/asyncpg/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def internal_error(_: AnyRequest, exc: Exception) -> Response[dict[str, str]]:
    log.exception("unhandled error", exc_info=exc)
    return error_response(
        HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "An unexpected error occurred."
    )


def exception_handlers() -> ExceptionHandlersMap:
    handlers: ExceptionHandlersMap = {
        AppError: app_error,
        ValidationException: validation_error,
        HTTPException: http_error,
        OSError: os_error,
        Exception: internal_error,
    }
    for exc_type in DB_ERRORS:
        handlers[exc_type] = database_down
    return handlers
