"""JSON logs, one object a line, for every entry point (CLI, server processes, sync worker).

Each line carries the id of the HTTP request it belongs to (`request_id`, also returned as the
X-Request-ID header), so one request's lines can be found among many workers' lines.

What must never be logged (names, e-mails, tokens, secrets) is kept out at the source: the
request log names the route template, never the path or query (result tokens travel in paths,
the webhook token in the query); messages name ids, counts and error types. `_redact` is the
net under that: it masks token-like query parameters and URL credentials that reach a message
through a library's exception text. Where uvicorn's access log is on (a server configured by
someone else, the tests), `keep_secrets_out_of_logs` masks the tokens in its lines. A flood of
identical lines (asyncio's accept loop at the descriptor limit, uvicorn's protocol warnings)
is rate-limited so that a hostile client cannot fill the disk.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import threading
import time
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("raiox_request_id", default=None)

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
_SECRETS = (
    (re.compile(r"((?:token|key|secret|signature|password)=)[^&\s\"']+", re.I), r"\1[redacted]"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1[redacted]@"),  # user:password@host
    (re.compile(r"/results/(?!jotform/)[^/?\s\"']+"), "/results/[redacted]"),
)

LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "appliance.logs.JsonFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        # uvicorn's own loggers go through the root handler; its access log is replaced by
        # appliance.api.observability's request line (route template, no path or query).
        "uvicorn": {"handlers": [], "level": "INFO", "propagate": True},
        "uvicorn.error": {"handlers": [], "level": "INFO", "propagate": True},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
        # pgserver narrates every pg_ctl call; httpx logs full URLs (tokens, file names).
        "pgserver": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "botocore": {"level": "WARNING"},
        "aiobotocore": {"level": "WARNING"},
    },
}


def _redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, when several serve
            "msg": _redact(record.getMessage()),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value  # fields passed with extra={...}
        if record.exc_info:
            entry["exc"] = _redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


# Loggers that a hostile or broken client can make repeat themselves: asyncio's accept loop
# ("socket.accept() out of system resource" at the descriptor limit), uvicorn's protocol
# warnings ("Invalid HTTP request received.", "Exceeded concurrency limit.").
NOISY_LOGGERS = ("asyncio", "uvicorn.error")


def configure_logging() -> None:
    logging.config.dictConfig(LOG_CONFIG)
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
