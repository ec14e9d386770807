"""What the OpenAPI document says beyond the handlers' signatures, so that it describes the
API as it answers: the one error shape, every status a route can answer, the security
schemes, and content that is not JSON (images, HTML, Jotform's multipart form)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

API_KEY = "apiKey"
WEBHOOK_TOKEN = "webhookToken"
WEBHOOK_BEARER = "webhookBearer"


class ErrorOut(msgspec.Struct):
    """Every error: a machine-readable code and a human sentence."""

    error: str
    detail: str


_DESCRIPTIONS = {
    400: "Malformed request (bad parameter, body, form or image bytes)",
    401: "Missing or wrong credential (API key or webhook token)",
    403: "Refused (the submission could not be confirmed with Jotform)",
    404: "Not found",
    409: "Conflict: catalog empty or made by another model, or the delivery is in progress",
    413: "Too large: body, image, pixels or number of form parts",
    415: "Not a supported image type",
    422: "Understood but unusable (no image, image too small, too many images, ...)",
    429: "Rate limited; see Retry-After",
    502: "Jotform's upload server or API could not be reached",
    503: "A dependency is down or the appliance is saturated; see Retry-After",
    507: "The appliance's disk is almost full; new images are refused",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """The documented error responses of a route, all `{"error", "detail"}`."""
    return {
        code: ResponseSpec(ErrorOut, description=_DESCRIPTIONS[code], generate_examples=False)
        for code in codes
    }


def binary(media_type: str, description: str) -> ResponseSpec:
    return ResponseSpec(
        bytes, description=description, media_type=media_type, generate_examples=False
    )


KEY_ERRORS = (400, 401, 429, 503)
KEYED: list[dict[str, list[str]]] = [{API_KEY: []}]
WEBHOOK: list[dict[str, list[str]]] = [{WEBHOOK_TOKEN: []}, {WEBHOOK_BEARER: []}]

COMPONENTS = Components(
    security_schemes={
        API_KEY: SecurityScheme(
            type="http",
            scheme="bearer",
            description="An API key from `raiox apikey create NAME` (not needed when the "
            "appliance runs with RAIOX_OPEN_ACCESS=1).",
        ),
        WEBHOOK_TOKEN: SecurityScheme(
            type="apiKey",
            name="token",
            security_scheme_in="query",
            description="RAIOX_WEBHOOK_TOKEN, as Jotform's webhook URL carries it.",
        ),
        WEBHOOK_BEARER: SecurityScheme(
            type="http",
            scheme="bearer",
            description="RAIOX_WEBHOOK_TOKEN as a bearer token (keeps it out of URLs).",
        ),
    }
)


@dataclass
class JotformOperation(Operation):
    """/jotform reads its multipart form itself (any number of `q{N}_…` fields); this says
    what Jotform and the prototype's forms send."""

    def __post_init__(self) -> None:
        text = Schema(type=OpenAPIType.STRING)
        self.request_body = RequestBody(
            required=True,
            content={
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        properties={
                            "formID": text,
                            "submissionID": text,
                            "rawRequest": Schema(
                                type=OpenAPIType.STRING,
                                description="JSON object of answers (q{N}_{name} keys)",
                            ),
                            "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                            "nome": text,
                            "email": text,
                            "paciente": text,
                            "dente": text,
                        },
                        additional_properties=text,
                    )
                )
            },
        )


@dataclass
class HtmlOrJsonOperation(Operation):
    """The result page: HTML for people, the result JSON for `.json` or Accept."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status.startswith("2") and isinstance(response, OpenAPIResponse):
                content = dict(response.content or {})
                content["text/html"] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
                response.content = content
