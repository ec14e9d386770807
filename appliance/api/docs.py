"""/docs: Swagger UI served from the appliance itself (a clinic's network may have no
internet), with no inline script, so the page runs under the same strict CSP as the rest.

The files under appliance/static/swagger-ui are swagger-ui-dist 5.35.0 from npm
(`npm pack swagger-ui-dist`; Apache-2.0, LICENSE and NOTICE beside them), plus raiox-init.js.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

STATIC_PATH = "/static/swagger-ui"
STATIC_DIR = Path(__file__).resolve().parents[1] / "static" / "swagger-ui"


class OfflineSwaggerUI(OpenAPIRenderPlugin):
    def __init__(self) -> None:
        super().__init__(path="/")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = str(openapi_schema["info"]["title"])
        return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{STATIC_PATH}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-spec="{self.get_openapi_json_route(request)}"></div>
<script src="{STATIC_PATH}/swagger-ui-bundle.js"></script>
<script src="{STATIC_PATH}/raiox-init.js"></script>
</body>
</html>
""".encode()


def swagger_static() -> Router:
    return create_static_files_router(
        path=STATIC_PATH, directories=[STATIC_DIR], include_in_schema=False
    )
