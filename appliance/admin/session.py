"""Sign-in and sign-out of the console."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.response import Redirect

from appliance.accounts import AccountLockedError, SignInRefusedError
from appliance.admin.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    AnyRequest,
    check_login_token,
    checked_form,
    cookie,
    new_login_token,
)
from appliance.admin.views import page, see_other, text
from appliance.components import Components

LOGIN_TOKEN_SECONDS = 3600


class SessionController(Controller):
    path = "/admin"
    tags = ["admin"]
    include_in_schema = False

    @get("/login")
    async def login_form(self, components: Components, base_url: str) -> Response[str]:
        return _login_page(components, base_url)

    @post("/login")
    async def login(
        self, request: AnyRequest, components: Components, base_url: str
    ) -> Response[Any]:
        form = await request.form()
        check_login_token(request, form)
        try:
            signed = await components.accounts.sign_in(
                text(form, "username"), text(form, "password")
            )
        except (SignInRefusedError, AccountLockedError) as exc:
            return _login_page(components, base_url, error=exc.detail, status=exc.status_code)
        response = see_other(f"{base_url}/admin")
        minutes = components.settings.admin.session_minutes
        response.cookies.append(
            cookie(components.settings, SESSION_COOKIE, signed.cookie, minutes * 60)
        )
        response.cookies.append(cookie(components.settings, LOGIN_COOKIE, "", 0))
        return response

    @post("/logout")
    async def logout(self, request: AnyRequest, components: Components, base_url: str) -> Redirect:
        """CSRF-checked like every form: a forged sign-out is a nuisance, not a risk, but the
        rule has no exceptions."""
        raw = request.cookies.get(SESSION_COOKIE)
        session = await components.accounts.session(raw)
        if session is not None:
            await checked_form(request, session)
            await components.accounts.sign_out(raw)
        response = see_other(f"{base_url}/admin/login")
        response.cookies.append(cookie(components.settings, SESSION_COOKIE, "", 0))
        return response


def _login_page(
    components: Components, base_url: str, *, error: str | None = None, status: int = 200
) -> Response[str]:
    token = new_login_token()
    response = page(
        "login.html", None, status=status, base_url=base_url, login_token=token, error=error
    )
    response.cookies.append(cookie(components.settings, LOGIN_COOKIE, token, LOGIN_TOKEN_SECONDS))
    return response
