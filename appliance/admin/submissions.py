"""Submissions in the console: the filtered list, one submission with its radiographs, top-3
and confirmed labels, retry, erasure, CSV export, and staff confirmation and promotion."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import Redirect

from appliance.accounts import StaffSession
from appliance.admin.auth import AnyRequest, checked_form, require_admin, staff_session
from appliance.admin.views import HEADERS, InvalidFormError, page, see_other, text
from appliance.api.images import image_response
from appliance.components import Components
from appliance.errors import AppError
from appliance.intake.deliveries import Intake
from appliance.review import SOURCES, STATUSES, SubmissionFilter, export_csv, find


class ImageNotFoundError(AppError):
    status_code = 404
    code = "image_not_found"


class SubmissionsController(Controller):
    path = "/admin/submissions"
    tags = ["admin"]
    include_in_schema = False
    dependencies = {"session": Provide(staff_session)}

    @get("/")
    async def submissions(
        self,
        session: StaffSession,
        components: Components,
        base_url: str,
        since: date | None = None,
        until: date | None = None,
        status: str = "",
        source: str = "",
        tooth: str = "",
        offset: Annotated[int, Parameter(ge=0)] = 0,
    ) -> Response[str]:
        wanted = SubmissionFilter(since, until, status, source, tooth, offset)
        rows, total = await find(components.database.pool, wanted)
        return page(
            "submissions.html",
            session,
            base_url=base_url,
            rows=rows,
            total=total,
            wanted=wanted,
            statuses=STATUSES,
            sources=SOURCES,
        )

    @get("/export.csv")
    async def export(
        self,
        session: StaffSession,
        components: Components,
        since: date | None = None,
        until: date | None = None,
        status: str = "",
        source: str = "",
        tooth: str = "",
    ) -> Response[str]:
        require_admin(session)  # names of dentists and patients
        wanted = SubmissionFilter(since, until, status, source, tooth)
        body = await export_csv(components.database.pool, wanted)
        headers = {**HEADERS, "Content-Disposition": 'attachment; filename="submissions.csv"'}
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)

    @get("/{submission_id:uuid}")
    async def submission(
        self,
        submission_id: uuid.UUID,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Response[str]:
        submission = await components.submissions.get(submission_id)
        return page(
            "submission.html",
            session,
            base_url=base_url,
            submission=submission,
            labels=await components.feedback.labels(submission_id),
            options=await components.curation.options(),
        )

    @get("/{submission_id:uuid}/images/{position:int}")
    async def radiograph(
        self,
        submission_id: uuid.UUID,
        position: int,
        session: StaffSession,
        components: Components,
    ) -> Response[bytes] | Redirect:
        submission = await components.submissions.get(submission_id)
        image = next((i for i in submission.images if i.position == position), None)
        key = image.storage_key if image else None
        return image_response(
            await components.images.url_or_bytes(key) if key else None,
            (image.content_type if image else None) or "application/octet-stream",
            HEADERS,
            ImageNotFoundError("No such image."),
        )

    @post("/{submission_id:uuid}/retry")
    async def retry(
        self,
        submission_id: uuid.UUID,
        request: AnyRequest,
        session: StaffSession,
        intake: Intake,
        base_url: str,
    ) -> Redirect:
        await checked_form(request, session)
        await intake.retry(submission_id)
        return see_other(f"{base_url}/admin/submissions/{submission_id}")

    @post("/{submission_id:uuid}/erase")
    async def erase(
        self,
        submission_id: uuid.UUID,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Response[str]:
        form = await checked_form(request, session)
        require_admin(session)
        if text(form, "confirm") != "apagar":
            raise InvalidFormError('Digite "apagar" para confirmar.')
        report = await components.erasure.erase(submission_id, actor=session.user.username)
        return page("erased.html", session, base_url=base_url, report=report)

    @post("/{submission_id:uuid}/images/{image_id:int}/confirm")
    async def confirm(
        self,
        submission_id: uuid.UUID,
        image_id: int,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Redirect:
        form = await checked_form(request, session)
        await _own_image(components, submission_id, image_id)
        await components.feedback.confirm(
            image_id, _implant_id(text(form, "implant_id")), actor=session.user.username
        )
        return see_other(f"{base_url}/admin/submissions/{submission_id}")

    @post("/{submission_id:uuid}/images/{image_id:int}/promote")
    async def promote(
        self,
        submission_id: uuid.UUID,
        image_id: int,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Redirect:
        await checked_form(request, session)
        await _own_image(components, submission_id, image_id)
        await components.feedback.promote(image_id, actor=session.user.username)
        return see_other(f"{base_url}/admin/submissions/{submission_id}")


async def _own_image(components: Components, submission_id: uuid.UUID, image_id: int) -> None:
    submission = await components.submissions.get(submission_id)
    if all(image.id != image_id for image in submission.images):
        raise ImageNotFoundError("No such image in this submission.")


def _implant_id(raw: str) -> int:
    if not raw.isdigit():
        raise InvalidFormError("Escolha o implante.")
    return int(raw)
