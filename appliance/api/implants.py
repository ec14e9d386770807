"""The reference catalog: GET /implants, /implants/{id}, and reference images."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Redirect

from appliance.api.access import require_api_key
from appliance.api.images import image_response
from appliance.api.openapi import KEY_ERRORS, KEYED, binary, errors
from appliance.api.schemas import (
    ImplantDetailOut,
    ImplantPageOut,
    implant_out,
    reference_url,
)
from appliance.catalog.repository import Catalog
from appliance.components import Components
from appliance.errors import AppError

# Ids and offsets are Postgres bigints: a larger number is a client's mistake (400), not a
# driver overflow (500). The bound is 2**53 - 1, the largest integer the OpenAPI document (a
# JSON number, read as a double) states exactly; no catalog gets near it.
MAX_ID = 2**53 - 1
DatabaseId = Annotated[int, Parameter(ge=1, le=MAX_ID)]


class ReferenceNotFoundError(AppError):
    status_code = 404
    code = "reference_not_found"


class ImplantController(Controller):
    tags = ["catalog"]
    guards = [require_api_key]

    @get(
        "/implants",
        summary="List reference implants (paginated, filter by manufacturer)",
        security=KEYED,
        responses=errors(*KEY_ERRORS),
    )
    async def list_implants(
        self,
        catalog: Catalog,
        manufacturer: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        offset: Annotated[int, Parameter(ge=0, le=MAX_ID)] = 0,
    ) -> ImplantPageOut:
        items, total = await catalog.list_implants(
            manufacturer=manufacturer, limit=limit, offset=offset
        )
        return ImplantPageOut(
            items=[implant_out(i) for i in items], total=total, limit=limit, offset=offset
        )

    @get(
        "/implants/{implant_id:int}",
        summary="One reference implant",
        security=KEYED,
        responses=errors(*KEY_ERRORS, 404),
    )
    async def get_implant(
        self, implant_id: DatabaseId, catalog: Catalog, base_url: str
    ) -> ImplantDetailOut:
        implant, reference_ids = await catalog.get_implant(implant_id)
        base = implant_out(implant)
        return ImplantDetailOut(
            **{f: getattr(base, f) for f in base.__struct_fields__},
            notes=implant.notes,
            reference_image_urls=[reference_url(base_url, r) for r in reference_ids],
        )

    @get(
        "/references/{reference_id:int}/image",
        summary="A reference image of the catalog (a redirect to Spaces if not held locally)",
        security=KEYED,
        responses={
            200: binary("image/*", "The image's bytes (PNG, JPEG, TIFF, BMP or WebP)"),
            307: ResponseSpec(None, description="A short-lived presigned link to Spaces"),
            **errors(*KEY_ERRORS, 404),
        },
    )
    async def reference_image(
        self, reference_id: DatabaseId, catalog: Catalog, components: Components
    ) -> Response[bytes] | Redirect:
        ref = await catalog.get_reference(reference_id)
        found = await components.images.url_or_bytes(ref.storage_key) if ref else None
        return image_response(
            found,
            _media_type(ref.storage_key) if ref else "",
            {"Cache-Control": "private, max-age=86400"},
            ReferenceNotFoundError(f"No reference image with id {reference_id}."),
        )


def _media_type(key: str) -> str:
    ext = key.rsplit(".", 1)[-1].lower()
    return {
        "png": "image/png",
        "jpg": "image/jpeg",
        "tif": "image/tiff",
        "bmp": "image/bmp",
        "webp": "image/webp",
    }.get(ext, "application/octet-stream")
