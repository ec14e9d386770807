"""Security headers on every response, errors and 404s included (a before-send hook sees
them all): no MIME sniffing, no framing, no referrer, and a Content-Security-Policy that
lets HTML load only the appliance's own files. A handler that sets its own (the result page)
keeps it."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HTML_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'"


async def security_headers(message: Message, _: Scope) -> None:
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in ALWAYS.items():
        if name not in headers:
            headers[name] = value
    if "Content-Security-Policy" not in headers:
        html = (headers.get("Content-Type") or "").startswith("text/html")
        headers["Content-Security-Policy"] = HTML_CSP if html else OTHER_CSP
