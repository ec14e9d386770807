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
from appliance.errors import AppError

log = logging.getLogger(__name__)
MULTIPART_PART_LIMIT = 1000  # litestar's default multipart_form_part_limit
LITESTAR_TOO_MANY_PARTS = "Request Entity Too Large"
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
    headers = dict(exc.headers or {})
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return error_response(exc.status_code, exc.code, exc.detail, headers or None)


def validation_error(_: AnyRequest, exc: ValidationException) -> Response[dict[str, str]]:
    problems = "; ".join(
        f"{e.get('key', 'body')}: {e.get('message', 'invalid')}"
        for e in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(e, dict)
    )
    return error_response(400, "invalid_request", problems or str(exc.detail))


def http_error(_: AnyRequest, exc: HTTPException) -> Response[dict[str, str]]:
    status = exc.status_code
    detail = str(exc.detail)
    if status == 400 and detail == LITESTAR_TOO_MANY_PARTS:
        status = 413  # litestar 2 keeps a 400 here for compatibility (a FIXME for 3.0)
        return error_response(
            status,
            "too_many_parts",
            f"The form has more than {MULTIPART_PART_LIMIT} parts; a radiograph needs a few.",
        )
    if status == 413:
        detail = "The request body is larger than this appliance accepts (RAIOX_MAX_UPLOAD_BYTES)."
    return error_response(status, _HTTP_CODES.get(status, "http_error"), detail, exc.headers)


def unreadable_request(request: AnyRequest, exc: Exception) -> Response[dict[str, str]]:
    """Litestar's body parsing lets two client mistakes escape as exceptions: a form part
    without a filename whose bytes are not UTF-8 (decoded as text), and JSON nested deeper
    than msgspec's stack (RecursionError). Raised anywhere else, they are bugs."""
    if not raised_in(exc, "/litestar/"):
        return internal_error(request, exc)
    if isinstance(exc, RecursionError):
        return error_response(400, "invalid_json", "The JSON body nests too deeply.")
    return error_response(
        400,
        "invalid_form",
        "A form field is not UTF-8 text (a file must be sent as a part with a filename).",
    )


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
    if raised_in(exc, "/asyncpg/"):
        return database_down(request, exc)
    return internal_error(request, exc)


def raised_in(exc: BaseException, package_path: str) -> bool:
    """Whether a frame of `exc`'s traceback runs code under `package_path` (/asyncpg/...)."""
    tb = exc.__traceback__
    while tb is not None:
        if package_path in tb.tb_frame.f_code.co_filename:
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
        UnicodeDecodeError: unreadable_request,
        RecursionError: unreadable_request,
        Exception: internal_error,
    }
    for exc_type in DB_ERRORS:
        handlers[exc_type] = database_down
    return handlers
