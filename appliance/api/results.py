"""The dentist's result: GET /results/{token} (an HTML page, or JSON at /results/{token}.json or
with `Accept: application/json`), the radiograph it shows, and the landing that Jotform's
thank-you redirect points at.

The token is the only key to health data, so the page is private by every means a browser
honours: no caching, no indexing, no referrer, no framing, and no script at all (CSP). It shows
the tooth, the radiograph and the matches, never the patient's or the dentist's name; once the
retention erased the radiograph (appliance.retention), it says so where the image was.

Jotform cannot know the token (the appliance makes it when the webhook arrives, which may be
after the dentist's browser is redirected), so the thank-you redirect goes to
/results/jotform/{submission_id}; that page waits for the webhook and then redirects to the
token's page, but only for RAIOX_RESULT_LINK_MINUTES after the submission arrived, so a guessed
submission id is worth nothing later.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jinja2
from litestar import Controller, Request, Response, get, post
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Redirect

from appliance.api.identification import model_out
from appliance.api.images import image_response
from appliance.api.openapi import HtmlOrJsonOperation, binary, errors
from appliance.api.schemas import identification_out, reference_url
from appliance.components import Components
from appliance.errors import AppError
from appliance.feedback import LabelRefusedError
from appliance.identification.identify import Identifier
from appliance.intake.fields import JOTFORM_ID
from appliance.submissions import (
    Source,
    Submission,
    SubmissionNotFoundError,
    SubmissionRepository,
)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
REFRESH_SECONDS = 2
MAX_WAIT_REFRESHES = 90  # three minutes of waiting for Jotform's webhook to arrive

PRIVATE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow, noarchive",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("appliance", "templates"), autoescape=True
)


class ResultNotFoundError(AppError):
    status_code = 404
    code = "result_not_found"


class ResultsController(Controller):
    tags = ["results"]

    @get(
        "/results/{token:str}",
        summary="A submission's result for the dentist (HTML; JSON with .json or Accept)",
        operation_class=HtmlOrJsonOperation,
        responses={
            404: ResponseSpec(str, description="No result has this link", media_type="text/html"),
            **errors(503),
        },
    )
    async def result(
        self,
        token: str,
        request: Request[Any, Any, Any],
        submissions: SubmissionRepository,
        identifier: Identifier,
        components: Components,
        base_url: str,
    ) -> Response[Any]:
        as_json = token.endswith(".json")
        token = token.removesuffix(".json")
        if not as_json:
            as_json = request.accept.best_match(["text/html", "application/json"]) == (
                "application/json"
            )
        submission = await _by_token(submissions, token)
        if as_json:
            if submission is None:
                raise ResultNotFoundError("No result has this link.")
            body = identification_out(submission, model_out(identifier), base_url)
            return Response(body, media_type=MediaType.JSON, headers=PRIVATE_HEADERS)
        if submission is None:
            return _page(404, state="not_found", title="resultado não encontrado")
        view = _result_view(submission, token, identifier, base_url)
        return _page(200, **view, **await _feedback_view(components, submission))

    @post(
        "/results/{token:str}/feedback",
        summary="The dentist confirms the implant of a result's radiograph (form post)",
        status_code=303,
        responses={
            404: ResponseSpec(
                str,
                description="No result has this link, or no such radiograph",
                media_type="text/html",
            ),
            409: ResponseSpec(
                str,
                description="Label refused (not identified, implant not in the catalog)",
                media_type="text/html",
            ),
            **errors(400, 413, 503),
        },
    )
    async def feedback(
        self,
        token: str,
        request: Request[Any, Any, Any],
        submissions: SubmissionRepository,
        identifier: Identifier,
        components: Components,
        base_url: str,
    ) -> Response[Any]:
        """The result link is the only key: whoever holds it may say which implant it is."""
        submission = await _by_token(submissions, token)
        if submission is None:
            return _page(404, state="not_found", title="resultado não encontrado")
        form = await request.form()
        position, implant_id = form.get("position"), form.get("implant_id")
        try:
            if not (isinstance(position, str) and position.isdigit()):
                raise ResultNotFoundError("No such image.")
            if not (isinstance(implant_id, str) and implant_id.isdigit()):
                raise LabelRefusedError("Escolha o implante.")
            await components.feedback.confirm_by_token(token, int(position), int(implant_id))
        except AppError as exc:
            view = _result_view(submission, token, identifier, base_url)
            extra = await _feedback_view(components, submission)
            return _page(exc.status_code, **view, **extra, feedback_error=exc.detail)
        return Redirect(
            f"{base_url}/results/{token}?confirmado=1#radiografia-{position}",
            status_code=303,
            headers=PRIVATE_HEADERS,
        )

    @get(
        "/results/{token:str}/images/{position:int}",
        summary="The radiograph of a result (a redirect to Spaces if not held locally)",
        responses={
            200: binary("image/*", "The radiograph's bytes"),
            307: ResponseSpec(None, description="A short-lived presigned link to Spaces"),
            **errors(400, 404, 503),
        },
    )
    async def radiograph(
        self,
        token: str,
        position: int,
        submissions: SubmissionRepository,
        components: Components,
    ) -> Response[bytes] | Redirect:
        submission = await _by_token(submissions, token)
        image = next(
            (i for i in (submission.images if submission else []) if i.position == position),
            None,
        )
        key = image.storage_key if image else None
        return image_response(
            await components.images.url_or_bytes(key) if key else None,
            (image.content_type if image else None) or "application/octet-stream",
            PRIVATE_HEADERS,
            ResultNotFoundError("No such image."),
        )

    @get(
        "/results/jotform/{submission_id:str}",
        summary="Landing for Jotform's thank-you redirect: waits, then redirects to the result",
        media_type=MediaType.HTML,
        responses={
            303: ResponseSpec(None, description="To the result page"),
            404: ResponseSpec(str, description="Never received", media_type="text/html"),
            410: ResponseSpec(str, description="The link has expired", media_type="text/html"),
            **errors(400, 503),
        },
    )
    async def jotform_landing(
        self,
        submission_id: str,
        submissions: SubmissionRepository,
        components: Components,
        base_url: str,
        n: Annotated[int, Parameter(ge=0, le=100_000)] = 0,
    ) -> Response[Any]:
        found = None
        if JOTFORM_ID.match(submission_id):
            found = await submissions.find_external(Source.JOTFORM, submission_id)
        if found is None:
            if n >= MAX_WAIT_REFRESHES or not JOTFORM_ID.match(submission_id):
                return _page(404, state="not_received", title="envio não recebido")
            refresh = {"seconds": REFRESH_SECONDS, "url": f"?n={n + 1}"}
            return _page(200, state="waiting", title="aguardando", refresh=refresh)
        window = timedelta(minutes=components.settings.jotform.result_link_minutes)
        if datetime.now(UTC) - found.created_at > window:
            return _page(410, state="expired", title="link expirado")
        return Redirect(
            f"{base_url}/results/{found.result_token}", status_code=303, headers=PRIVATE_HEADERS
        )


async def _by_token(submissions: SubmissionRepository, token: str) -> Submission | None:
    if not _TOKEN.match(token):
        return None
    try:
        return await submissions.get_by_token(token)
    except SubmissionNotFoundError:
        return None


def _page(http_status: int, **context: Any) -> Response[str]:
    html = _templates.get_template("results.html").render(**context)
    return Response(
        html, status_code=http_status, media_type=MediaType.HTML, headers=PRIVATE_HEADERS
    )


async def _feedback_view(components: Components, submission: Submission) -> dict[str, Any]:
    """What the dentist already confirmed per image, and the implants to pick from."""
    if submission.status != "done":
        return {"labels": {}, "options": []}
    labels = await components.feedback.labels(submission.id)
    return {
        "labels": {image.position: labels.get(image.id) for image in submission.images},
        "options": await components.curation.options(),
    }


def _day(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%d/%m/%Y") if moment else None


def _result_view(
    submission: Submission, token: str, identifier: Identifier, base_url: str
) -> dict[str, Any]:
    processing = submission.status in ("received", "processing")
    done_flags = [i.model_pretrained for i in submission.images if i.model_pretrained is not None]
    untrained = not all(done_flags) if done_flags else not identifier.model_pretrained
    images = [
        {
            "position": image.position,
            "status": image.status,
            "error": image.error,
            "src": f"{base_url}/results/{token}/images/{image.position}"
            if image.storage_key
            else None,
            "matches": [
                {
                    "rank": m.rank,
                    "implant_id": m.implant.id,
                    "name": m.implant.name,
                    "manufacturer": m.implant.manufacturer,
                    "type": m.implant.type,
                    "similarity": f"{m.similarity:.3f}",
                    "synthetic": m.implant.synthetic,
                    "reference_url": reference_url(base_url, m.reference_image_id),
                }
                for m in image.matches
            ],
        }
        for image in submission.images
    ]
    return {
        "state": "result",
        "title": "resultado",
        "status": submission.status,
        "error": submission.error,
        "tooth": submission.tooth,
        "received": submission.created_at.astimezone(UTC).strftime("%d/%m/%Y %H:%M UTC"),
        "erased": _day(submission.personal_data_erased_at),
        "untrained": untrained,
        "synthetic": any(m.implant.synthetic for i in submission.images for m in i.matches),
        "images": images,
        "refresh": {"seconds": REFRESH_SECONDS, "url": ""} if processing else None,
        "feedback_url": f"{base_url}/results/{token}/feedback",
    }
