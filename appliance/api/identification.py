"""POST /upload and GET /submissions/{id}: the prototype's direct-upload path."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body

from appliance.api.access import authenticated_key, require_api_key, require_free_disk
from appliance.api.openapi import KEY_ERRORS, KEYED, errors
from appliance.api.schemas import IdentificationOut, ModelOut, identification_out
from appliance.errors import AppError
from appliance.identification.identify import Identifier
from appliance.submissions import Source, SubmissionRepository, Submitter


class MissingFileError(AppError):
    status_code = 422
    code = "missing_file"


@dataclass
class UploadForm:
    """The prototype's form fields, kept so existing forms keep working."""

    file: UploadFile | None = None
    nome: str | None = None
    email: str | None = None
    paciente: str | None = None
    dente: str | None = None


def model_out(identifier: Identifier) -> ModelOut:
    return ModelOut(id=identifier.model_id, pretrained=identifier.model_pretrained)


class IdentificationController(Controller):
    tags = ["identification"]
    guards = [require_api_key]

    @post(
        "/upload",
        status_code=200,
        security=KEYED,
        responses=errors(*KEY_ERRORS, 409, 413, 415, 422, 507),
        guards=[require_free_disk],
        summary="Identify the implant in one radiograph",
        description=(
            "Multipart form with `file` (JPEG, PNG 8/16-bit, TIFF, BMP or WebP) and optional "
            "`nome`, `email`, `paciente`, `dente`. Answers the three most similar reference "
            "implants. Errors: 400/413/415/422 for bad images or bodies, 409 when the catalog "
            "is empty or made by another model, 503 when a dependency is down or the "
            "appliance is saturated (with Retry-After)."
        ),
    )
    async def upload(
        self,
        data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)],
        identifier: Identifier,
        base_url: str,
    ) -> IdentificationOut:
        if data.file is None or not isinstance(data.file, UploadFile):
            raise MissingFileError("Send the radiograph as the multipart field `file`.")
        content = await data.file.read()
        submitter = Submitter(
            dentist_name=_clean(data.nome),
            dentist_email=_clean(data.email),
            patient_name=_clean(data.paciente),
            tooth=_clean(data.dente),
        )
        submission = await identifier.identify_upload(
            content, source=Source.UPLOAD, submitter=submitter
        )
        return identification_out(submission, model_out(identifier), base_url)

    @get(
        "/submissions/{submission_id:uuid}",
        summary="A stored identification result (result_url only for API key holders)",
        security=KEYED,
        responses=errors(*KEY_ERRORS, 404),
    )
    async def get_submission(
        self,
        request: Request[Any, Any, Any],
        submission_id: uuid.UUID,
        submissions: SubmissionRepository,
        identifier: Identifier,
        base_url: str,
    ) -> IdentificationOut:
        submission = await submissions.get(submission_id)
        out = identification_out(submission, model_out(identifier), base_url)
        if authenticated_key(request) is None:
            # Ids show up in logs; the result link (a capability) goes only to key holders.
            out.result_url = None
        return out


def _clean(value: str | None) -> str | None:
    text = (value or "").strip()
    return text[:500] or None
