"""Response bodies (msgspec structs: fast to encode and described in the OpenAPI schema)."""

from __future__ import annotations

import msgspec

from appliance.catalog.repository import Implant, Match
from appliance.submissions import Submission


class ModelOut(msgspec.Struct):
    id: str
    pretrained: bool


class ImplantOut(msgspec.Struct):
    id: int
    name: str
    manufacturer: str
    type: str
    platform: str | None = None
    diameter_mm: float | None = None
    length_mm: float | None = None
    synthetic: bool = False


class ImplantDetailOut(ImplantOut, kw_only=True):
    notes: str | None = None
    reference_image_urls: list[str] = msgspec.field(default_factory=list)


class ImplantPageOut(msgspec.Struct):
    items: list[ImplantOut]
    total: int
    limit: int
    offset: int


class MatchOut(msgspec.Struct):
    rank: int
    implant: ImplantOut
    similarity: float
    reference_image_url: str


class ImageResultOut(msgspec.Struct):
    position: int
    status: str
    matches: list[MatchOut]
    error: str | None = None


class IdentificationOut(msgspec.Struct):
    submission_id: str
    status: str
    model: ModelOut
    matches: list[MatchOut]
    images: list[ImageResultOut]
    result_url: str | None  # the result page (a capability): absent for GET /submissions
    error: str | None = None


def implant_out(implant: Implant) -> ImplantOut:
    return ImplantOut(
        id=implant.id,
        name=implant.name,
        manufacturer=implant.manufacturer,
        type=implant.type,
        platform=implant.platform,
        diameter_mm=implant.diameter_mm,
        length_mm=implant.length_mm,
        synthetic=implant.synthetic,
    )


def reference_url(base: str, reference_id: int | None) -> str:
    return f"{base}/references/{reference_id}/image" if reference_id is not None else ""


def match_out(match: Match, base: str) -> MatchOut:
    return MatchOut(
        rank=match.rank,
        implant=implant_out(match.implant),
        similarity=round(match.similarity, 6),
        reference_image_url=reference_url(base, match.reference_image_id),
    )


def identification_out(submission: Submission, model: ModelOut, base: str) -> IdentificationOut:
    """The stored result; `matches` is the first image's, as the prototype's clients expect."""
    images = [
        ImageResultOut(
            position=img.position,
            status=img.status,
            matches=[match_out(m, base) for m in img.matches],
            error=img.error,
        )
        for img in submission.images
    ]
    model_ids = {img.model_id for img in submission.images if img.model_id}
    if model_ids and model.id not in model_ids:
        first = next(img for img in submission.images if img.model_id)
        model = ModelOut(id=first.model_id or "", pretrained=bool(first.model_pretrained))
    return IdentificationOut(
        submission_id=str(submission.id),
        status=submission.status,
        model=model,
        matches=images[0].matches if images else [],
        images=images,
        result_url=f"{base}/results/{submission.result_token}",
        error=submission.error,
    )
