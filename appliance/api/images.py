"""One way to answer with a stored image: its bytes when held locally, else a 307 to a
short-lived presigned Spaces URL; never a public link."""

from __future__ import annotations

from litestar import Response
from litestar.response import Redirect

from appliance.errors import AppError


def image_response(
    found: bytes | str | None,
    media_type: str,
    headers: dict[str, str],
    missing: AppError,
) -> Response[bytes] | Redirect:
    if found is None:
        raise missing
    if isinstance(found, str):
        return Redirect(found, status_code=307, headers={"Cache-Control": "no-store"})
    return Response(found, media_type=media_type, headers=headers)
