"""Request ids, request metrics and the request log line, for every request.

It wraps the whole Litestar handler (not a route's middleware stack), so requests that match no
route, and errors turned into responses by the exception handlers, are counted and logged too.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance import metrics
from appliance.logs import REQUEST_ID

log = logging.getLogger("appliance.requests")

REQUEST_ID_HEADER = b"x-request-id"
# An incoming id is kept only if it cannot smuggle anything into a log line or a header.
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{8,128}")
# Scraped every few seconds: their lines would drown the rest.
_QUIET_ROUTES = frozenset({"/metrics", "/healthcheck"})


def instrument(app: Litestar) -> Litestar:
    app.asgi_handler = RequestObservability(app.asgi_handler)
    return app


class RequestObservability:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:  # websockets: none yet, nothing to count
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        status = 500  # what the client gets if the handler raises past Litestar
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER
                ]
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, status, time.perf_counter() - start)
            REQUEST_ID.reset(token)

    @staticmethod
    def _observe(scope: Scope, status: int, seconds: float) -> None:
        route = str(scope.get("path_template") or "unmatched")
        method = str(scope.get("method", "GET"))
        method = method if method in metrics.METHODS else "other"
        metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
        metrics.HTTP_DURATION.labels(route, method).observe(seconds)
        fields: dict[str, Any] = {
            "method": method,
            "route": route,  # the template: paths carry result tokens, queries webhook tokens
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
        }
        level = logging.DEBUG if route in _QUIET_ROUTES and status < 500 else logging.INFO
        log.log(level, "%s %s %d", method, route, status, extra=fields)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == REQUEST_ID_HEADER and _VALID_ID.fullmatch(value):
            return str(value.decode())
    return None
