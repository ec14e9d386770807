"""POST /jotform and POST /webhook: form deliveries, authenticated by a secret in the URL.

Jotform signs nothing, so the webhook URL carries the secret (`?token=`, RAIOX_WEBHOOK_TOKEN),
compared in constant time before the body is read. Generic senders may send it as
`Authorization: Bearer` instead, which keeps it out of URLs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, post
from litestar.connection import ASGIConnection
from litestar.datastructures import UploadFile
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter

from appliance.api.access import require_free_disk
from appliance.api.identification import model_out
from appliance.api.openapi import WEBHOOK, JotformOperation, errors
from appliance.api.schemas import IdentificationOut, identification_out
from appliance.errors import AppError
from appliance.identification.identify import Identifier
from appliance.intake.deliveries import Delivery, ImageSource, Intake, Outcome
from appliance.intake.fields import DENTIST_NAME, EMAIL, PATIENT_NAME, TEXT_FIELDS, TOOTH
from appliance.intake.jotform import clean_text, read_post
from appliance.submissions import Source, Submitter

T = TypeVar("T")
IDEMPOTENCY_KEY = r"^[!-~]{1,200}$"  # printable ASCII, no spaces
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_running: set[asyncio.Task[Any]] = set()


INTAKE_ERRORS = (400, 401, 403, 409, 413, 415, 422, 502, 503, 507)


class WebhookUnauthorizedError(AppError):
    status_code = 401
    code = "unauthorized"


class WebhooksDisabledError(AppError):
    status_code = 503
    code = "webhooks_disabled"


class InvalidWebhookError(AppError):
    status_code = 400
    code = "invalid_webhook"


class WebhookIn(msgspec.Struct, forbid_unknown_fields=False):
    """A generic form tool's delivery: the image by URL (from an allowed origin) or inline as
    base64, with the prototype's optional fields."""

    image_url: str | None = None
    image_urls: list[str] = msgspec.field(default_factory=list)
    image_base64: str | None = None
    nome: str | None = None
    email: str | None = None
    paciente: str | None = None
    dente: str | None = None


async def require_webhook_token(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Async because it does no I/O: a sync guard costs a hop to Litestar's thread pool."""
    expected = connection.app.state.components.settings.jotform.webhook_token
    if not expected:
        raise WebhooksDisabledError(
            "Webhooks are off on this appliance: set RAIOX_WEBHOOK_TOKEN and add "
            "?token=<that value> to the webhook URL."
        )
    given = connection.query_params.get("token") or _bearer(connection.headers.get("authorization"))
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise WebhookUnauthorizedError("Missing or wrong ?token= in the webhook URL.")


class IntakeController(Controller):
    tags = ["webhooks"]
    guards = [require_webhook_token, require_free_disk]

    @post(
        "/jotform",
        status_code=200,
        summary="Jotform webhook (real Jotform payloads and the prototype's multipart form)",
        security=WEBHOOK,
        operation_class=JotformOperation,
        responses=errors(*INTAKE_ERRORS),
        description=(
            "Point the form's webhook at `/jotform?token=RAIOX_WEBHOOK_TOKEN`. Accepts Jotform's "
            "multipart POST (formID, submissionID, rawRequest with q{N}_{name} answers and "
            "file-upload URLs) and the prototype's `file` + nome/email/paciente/dente. Uploaded "
            "files are fetched only from RAIOX_JOTFORM_UPLOAD_ORIGINS. A repeated submissionID "
            "answers 200 with the stored result. Errors: 401 token, 400 malformed rawRequest, "
            "422 no image / origin not allowed / download too large or too slow, 502 upload "
            "server unreachable (stored as failed; redeliver or `raiox submissions retry`)."
        ),
    )
    async def jotform(
        self, request: Request[Any, Any, Any], intake: Intake, identifier: Identifier, base_url: str
    ) -> IdentificationOut:
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        files = [f for f in form.getall("file", []) if isinstance(f, UploadFile)]
        post_ = read_post(fields, intake.field_map)
        inline = [ImageSource(data=await f.read()) for f in files]
        delivery = Delivery(
            source=Source.JOTFORM,
            external_id=post_.submission_id,
            submitter=_submitter(post_.text),
            images=[*inline, *(ImageSource(url=u) for u in post_.upload_urls)],
            shape="jotform" if "rawRequest" in fields else "seed",
            form_id=post_.form_id,
        )
        return _answer(await _to_completion(intake.receive(delivery)), identifier, base_url)

    @post(
        "/webhook",
        status_code=200,
        summary="Generic JSON webhook for other form tools",
        security=WEBHOOK,
        responses=errors(*INTAKE_ERRORS),
        description=(
            "JSON with `image_url` / `image_urls` (allowed origins only) or `image_base64`, and "
            "optional nome, email, paciente, dente. Authenticate with `?token=` or "
            "`Authorization: Bearer`. An `Idempotency-Key` header makes a repeated delivery "
            "answer the stored result instead of processing it again."
        ),
    )
    async def webhook(
        self,
        data: WebhookIn,
        intake: Intake,
        identifier: Identifier,
        base_url: str,
        idempotency_key: Annotated[
            str | None,
            Parameter(header="Idempotency-Key", pattern=IDEMPOTENCY_KEY, max_length=200),
        ] = None,
    ) -> IdentificationOut:
        urls = [u for u in (data.image_url, *data.image_urls) if u]
        images = [ImageSource(url=u) for u in urls]
        if data.image_base64:
            images.insert(0, ImageSource(data=_base64(data.image_base64)))
        text = {f: v for f in TEXT_FIELDS if (v := clean_text(getattr(data, f)))}
        delivery = Delivery(
            source=Source.WEBHOOK,
            external_id=idempotency_key,
            submitter=_submitter(text),
            images=images,
            shape="json",
        )
        return _answer(await _to_completion(intake.receive(delivery)), identifier, base_url)


def _answer(outcome: Outcome, identifier: Identifier, base_url: str) -> IdentificationOut:
    """200 with the result when every image was identified (or the delivery was a repeat);
    otherwise the first failure's own status. The submission is stored either way."""
    if outcome.error is not None:
        raise outcome.error
    return identification_out(outcome.submission, model_out(identifier), base_url)


async def _to_completion(job: Coroutine[Any, Any, T]) -> T:
    """A sender that hangs up must not cancel the work halfway and leave the submission
    'processing'; the task finishes on its own and the sender's retry finds it stored."""
    task = asyncio.ensure_future(job)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)


def _submitter(text: dict[str, str]) -> Submitter:
    return Submitter(
        dentist_name=text.get(DENTIST_NAME),
        dentist_email=text.get(EMAIL),
        patient_name=text.get(PATIENT_NAME),
        tooth=text.get(TOOTH),
    )


def _bearer(header: str | None) -> str:
    scheme, _, value = (header or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _base64(text: str) -> bytes:
    compact = "".join(_DATA_URL.sub("", text.strip()).split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidWebhookError("image_base64 is not valid base64.") from None
