"""Who may do what in the console: the session cookie, CSRF tokens and roles.

The session cookie is HttpOnly, SameSite=Strict, limited to /admin and Secure when the
appliance is reached over https (RAIOX_PUBLIC_BASE_URL). Every state-changing form carries the
session's CSRF token; the sign-in form, which has no session yet, carries a double-submit
token that matches a cookie of its own.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie, FormMultiDict

from appliance.accounts import StaffSession
from appliance.components import Components
from appliance.errors import AppError
from appliance.settings import Settings

SESSION_COOKIE = "raiox_admin"
LOGIN_COOKIE = "raiox_admin_login"
COOKIE_PATH = "/admin"
AnyRequest = Request[Any, Any, Any]


class SignInRequiredError(AppError):
    status_code = 401
    code = "sign_in_required"


class CsrfError(AppError):
    status_code = 403
    code = "csrf_failed"


class AdminOnlyError(AppError):
    status_code = 403
    code = "admin_only"


async def staff_session(request: AnyRequest, components: Components) -> StaffSession:
    """Dependency of every console page but sign-in: the live session, or a redirect to it."""
    session = await components.accounts.session(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequiredError("Entre para continuar.")
    return session


async def checked_form(request: AnyRequest, session: StaffSession) -> FormMultiDict:
    """The posted form, once its CSRF token is the session's."""
    form = await request.form()
    _check_token(form, session.csrf_token)
    return form


def require_admin(session: StaffSession) -> None:
    if not session.user.is_admin:
        raise AdminOnlyError("Só um administrador pode fazer isto.")


def check_login_token(request: AnyRequest, form: FormMultiDict) -> None:
    _check_token(form, request.cookies.get(LOGIN_COOKIE) or "")


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def cookie(settings: Settings, key: str, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=settings.server.behind_tls,
    )


def _check_token(form: FormMultiDict, expected: str) -> None:
    sent = form.get("csrf_token")
    if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
        raise CsrfError(
            "O formulário expirou ou não veio desta página; recarregue e tente de novo."
        )
