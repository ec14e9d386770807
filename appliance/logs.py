"""Logging for every entry point (CLI, server process, workers), configured here and only here:
format and levels, and the filter that keeps secrets out of uvicorn's access log."""

from __future__ import annotations

import logging
import re


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it narrates every pg_ctl call
    keep_secrets_out_of_logs()


class _RedactSecrets(logging.Filter):
    """uvicorn logs every request line, and both the webhook token (?token=) and result tokens
    (/results/{token}) travel in URLs: keep them out of the access log."""

    _query = re.compile(r"((?:^|[?&])token=)[^&\s]*")
    _result = re.compile(r"/results/(?!jotform/)[^/?\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = self._result.sub(
                "/results/[redacted]", self._query.sub(r"\1[redacted]", args[2])
            )
            record.args = (*args[:2], path, *args[3:])
        return True


def keep_secrets_out_of_logs() -> None:
    """Also done by create_app, so that wherever the app runs (tests, an embedding server)
    tokens stay out of the access log, and httpx, which logs every request's full URL at INFO
    (a file name that may carry a patient's name; for private uploads, the Jotform API key),
    logs warnings and errors only."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactSecrets) for f in access.filters):
        access.addFilter(_RedactSecrets())
