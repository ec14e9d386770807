"""Rendering console pages: one Jinja environment, the console's security headers, and the
forms' parsing helpers."""

from __future__ import annotations

from typing import Any

import jinja2
from litestar import Response
from litestar.datastructures import FormMultiDict
from litestar.enums import MediaType
from litestar.response import Redirect

from appliance.accounts import StaffSession
from appliance.errors import AppError

HEADERS = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow, noarchive",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    # No script at all: plain forms. Images only from this appliance.
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}


class InvalidFormError(AppError):
    status_code = 422
    code = "invalid_form"


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("appliance", "admin/templates"), autoescape=True
)
_templates.filters["datetime"] = lambda v: v.strftime("%d/%m/%Y %H:%M") if v else ""
_templates.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f}%"


def page(
    template: str,
    session: StaffSession | None,
    *,
    status: int = 200,
    base_url: str = "",
    **context: Any,
) -> Response[str]:
    html = _templates.get_template(template).render(session=session, base=base_url, **context)
    return Response(html, status_code=status, media_type=MediaType.HTML, headers=HEADERS)


def see_other(url: str) -> Redirect:
    return Redirect(url, status_code=303, headers=HEADERS)


def text(form: FormMultiDict, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def optional(form: FormMultiDict, name: str) -> str | None:
    return text(form, name) or None


def number(form: FormMultiDict, name: str) -> float | None:
    raw = text(form, name).replace(",", ".")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidFormError(f"{raw!r} não é um número.") from None
