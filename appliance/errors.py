"""Errors that are data: each carries the HTTP status and the machine-readable code the API
answers with, so adapters can raise meaningful failures without knowing about HTTP."""

from __future__ import annotations


class AppError(Exception):
    """Base of every error the API turns into `{"error": code, "detail": text}`."""

    status_code: int = 400
    code: str = "bad_request"
    headers: dict[str, str] | None = None  # sent with the error (WWW-Authenticate, ...)

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ServiceUnavailableError(AppError):
    """A dependency is down; the client may retry later."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, detail: str, retry_after_s: int = 5) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
