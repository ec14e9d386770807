"""The staff console at /admin: server-rendered pages in Portuguese on the same use cases as
the API. `admin_router()` is what the app mounts."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router
from litestar.types import ExceptionHandlersMap

from appliance.admin.auth import SignInRequiredError
from appliance.admin.catalog import CatalogController
from appliance.admin.dashboard import DashboardController
from appliance.admin.session import SessionController
from appliance.admin.submissions import SubmissionsController
from appliance.admin.views import page, see_other
from appliance.errors import AppError


def _base(request: Request[Any, Any, Any]) -> str:
    return (request.app.state.components.settings.server.public_base_url or "").rstrip("/")


def _sign_in(request: Request[Any, Any, Any], _: SignInRequiredError) -> Response[Any]:
    return see_other(f"{_base(request)}/admin/login")


def _refused(request: Request[Any, Any, Any], exc: AppError) -> Response[str]:
    """Errors are pages here, with the code the API would answer in data-error."""
    return page("error.html", None, status=exc.status_code, base_url=_base(request), error=exc)


def admin_router() -> Router:
    handlers: ExceptionHandlersMap = {SignInRequiredError: _sign_in, AppError: _refused}
    return Router(
        path="/",
        route_handlers=[
            SessionController,
            DashboardController,
            CatalogController,
            SubmissionsController,
        ],
        exception_handlers=handlers,
        include_in_schema=False,
    )
