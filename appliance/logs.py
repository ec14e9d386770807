"""Logging for every entry point (CLI, server process, workers), configured here and only here:
format and levels, the filter that keeps secrets out of uvicorn's access log, and the one
that keeps a flood of identical errors from filling the disk."""

from __future__ import annotations

import logging
import re
import threading
import time

# Loggers that a hostile or broken client can make repeat themselves: asyncio's accept loop
# ("socket.accept() out of system resource" at the descriptor limit), uvicorn's protocol
# warnings ("Invalid HTTP request received.", "Exceeded concurrency limit.").
NOISY_LOGGERS = ("asyncio", "uvicorn.error")


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it narrates every pg_ctl call
    keep_secrets_out_of_logs()
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _rate_limit not in logger.filters:
            logger.addFilter(_rate_limit)


class RateLimitFilter(logging.Filter):
    """At most `burst` records per message template per `window` seconds; the first record of
    the next window says how many were dropped. A flood stays a few lines a minute."""

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            start, seen, dropped = self._state.get(key, (now, 0, 0))
            if now - start >= self.window:
                start, seen = now, 0
            if seen >= self.burst:
                self._state[key] = (start, seen, dropped + 1)
                return False
            self._state[key] = (start, seen + 1, 0)
            if len(self._state) > 1000:  # templates are few; never grow without bound
                self._state.clear()
        if dropped:
            record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
        return True


_rate_limit = RateLimitFilter()


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
