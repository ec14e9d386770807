"""The intake use case: a form delivery -> a stored submission -> each image fetched, kept and
identified -> the stored result.

The order is what makes deliveries safe to repeat and impossible to lose. Everything that can be
refused without the network (no image, an upload URL off the allowlist) is refused before
anything is written. Then the submission row is written, before any slow work, and (source,
external id) makes a redelivery find it instead of starting again, also when two deliveries race.
Each image's bytes are kept on disk and recorded as soon as they decode, so a later failure
(the model, the database, a busy appliance) is retried from disk, not from Jotform. A failed
submission is claimed atomically before it is retried, by a redelivery or by
`raiox submissions retry`, so no two workers ever process it together.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import AppError
from appliance.identification.identify import Identifier
from appliance.intake.downloads import Downloader, DownloadSession
from appliance.intake.jotform import FieldMap, JotformApi, SubmissionNotConfirmedError
from appliance.storage import LocalImageStore
from appliance.submissions import (
    Source,
    Submission,
    SubmissionImage,
    SubmissionRepository,
    Submitter,
)

log = logging.getLogger(__name__)


class NoImageError(AppError):
    status_code = 422
    code = "no_image"


class ImageUnavailableError(AppError):
    status_code = 422
    code = "image_unavailable"


class TooManyImagesError(AppError):
    status_code = 422
    code = "too_many_images"


class DeliveryInProgressError(AppError):
    """The same delivery (submissionID or Idempotency-Key) is still being processed."""

    status_code = 409
    code = "delivery_in_progress"
    retry_after_s = 5


@dataclass(frozen=True)
class ImageSource:
    """Where one image of a delivery comes from: bytes sent inline, or a URL to fetch."""

    url: str | None = None
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Delivery:
    source: Source
    external_id: str | None  # Jotform's submissionID or the Idempotency-Key
    submitter: Submitter
    images: Sequence[ImageSource]
    shape: str  # how it arrived: jotform | seed | json
    form_id: str | None = None

    def payload(self) -> dict[str, Any]:
        """What a retry needs beyond the rows: no token, no API key, no answers, no bytes."""
        return {"shape": self.shape, "form_id": self.form_id}


@dataclass(frozen=True)
class Outcome:
    submission: Submission
    error: AppError | None = None  # the first failure; it decides the HTTP status


class Intake:
    def __init__(
        self,
        *,
        identifier: Identifier,
        submissions: SubmissionRepository,
        store: LocalImageStore,
        downloader: Downloader,
        field_map: FieldMap,
        jotform_api: JotformApi | None = None,
        max_images: int = 10,
        repeat_wait_s: float = 30.0,
    ) -> None:
        self.max_images = max_images
        self.repeat_wait_s = repeat_wait_s
        self.identifier = identifier
        self.submissions = submissions
        self.store = store
        self.downloader = downloader
        self.field_map = field_map
        self.jotform_api = jotform_api

    async def receive(self, delivery: Delivery) -> Outcome:
        """Process a delivery once; a repeat answers with the stored submission, or retries it
        when it failed."""
        self._refuse_early(delivery)
        submission, created = await self.submissions.create(
            source=delivery.source,
            external_id=delivery.external_id,
            submitter=delivery.submitter,
            client_id=self.identifier.client_id(delivery.submitter.dentist_email),
            image_urls=[image.url for image in delivery.images],
            payload=delivery.payload(),
        )
        if not created:
            if not await self.submissions.reopen(submission.id):
                # A repeated delivery: answered with what is stored, once it is stored.
                return Outcome(await self._settled(submission))
            submission = await self.submissions.get(submission.id)
        return await self._process(submission, delivery.images, delivery.form_id)

    async def retry(self, submission_id: uuid.UUID) -> Outcome | None:
        """Process a failed submission again from what was kept; None when it is not failed or
        another delivery or retry holds it."""
        if not await self.submissions.reopen(submission_id):
            return None
        submission = await self.submissions.get(submission_id)
        payload = await self.submissions.payload(submission_id) or {}
        return await self._process(submission, (), payload.get("form_id"))

    async def _settled(self, submission: Submission) -> Submission:
        """The stored submission once the delivery processing it has finished; a concurrent
        repeat that outlasts the wait gets a clear 409 rather than a result without matches."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.repeat_wait_s
        while submission.status == "processing":
            if loop.time() >= deadline:
                raise DeliveryInProgressError(
                    "This delivery is still being processed; repeat it in a few seconds to "
                    "get the result."
                )
            await asyncio.sleep(0.2)
            submission = await self.submissions.get(submission.id)
        return submission

    def _refuse_early(self, delivery: Delivery) -> None:
        if not delivery.images:
            raise NoImageError(
                "The submission has no image: attach the radiograph as a file upload "
                "(Jotform), the `file` part, `image_url` or `image_base64`."
            )
        if len(delivery.images) > self.max_images:
            raise TooManyImagesError(
                f"The delivery has {len(delivery.images)} images; at most {self.max_images} "
                "are accepted at once (RAIOX_MAX_IMAGES_PER_DELIVERY)."
            )
        for image in delivery.images:
            if image.url is not None:
                self.downloader.check(image.url)
        confirming = self.jotform_api is not None and delivery.source is Source.JOTFORM
        if confirming and not (delivery.external_id and delivery.form_id):
            raise SubmissionNotConfirmedError(
                "Submissions are confirmed with Jotform (RAIOX_JOTFORM_VERIFY_SUBMISSIONS), "
                "which needs formID and submissionID in the delivery."
            )

    async def _process(
        self, submission: Submission, sources: Sequence[ImageSource], form_id: str | None
    ) -> Outcome:
        first_error: AppError | None = None
        try:
            await self._confirm(submission, form_id)
        except AppError as exc:
            first_error = exc
            await self._fail_unfinished(submission, exc.detail)
        else:
            async with self.downloader.session() as session:
                for image in submission.images:
                    if image.status == "done":
                        continue
                    source = sources[image.position] if image.position < len(sources) else None
                    try:
                        await self._identify(submission, image, source, session)
                    except AppError as exc:  # already recorded on the image
                        first_error = first_error or exc
        finished = await self.identifier.finish(submission)
        log.info(
            "submission %s (%s): %s", finished.id, finished.source, finished.status
        )  # ids and states only: names, emails and URLs are health data
        return Outcome(finished, first_error)

    async def _confirm(self, submission: Submission, form_id: str | None) -> None:
        if self.jotform_api is None or submission.source is not Source.JOTFORM:
            return
        if not (submission.external_id and form_id):
            raise SubmissionNotConfirmedError("Cannot confirm a submission without its form id.")
        await self.jotform_api.confirm(submission.external_id, form_id)

    async def _identify(
        self,
        submission: Submission,
        image: SubmissionImage,
        source: ImageSource | None,
        session: DownloadSession,
    ) -> None:
        try:
            data = await self._bytes(image, source, session)
        except AppError as exc:
            await self.identifier.record_failure(image, exc.detail)
            raise
        await self.identifier.identify_stored(submission, image, data)

    async def _bytes(
        self, image: SubmissionImage, source: ImageSource | None, session: DownloadSession
    ) -> bytes:
        if image.storage_key:
            kept = await self.store.read(image.storage_key)
            if kept is not None:
                return kept
        if source is not None and source.data is not None:
            return source.data
        url = image.source_url or (source.url if source else None)
        if url:
            return await session.fetch(url)
        raise ImageUnavailableError(
            "The image was not kept (it could not be read when it arrived); send it again."
        )

    async def _fail_unfinished(self, submission: Submission, reason: str) -> None:
        for image in submission.images:
            if image.status != "done":
                await self.submissions.mark_image_failed(image.id, reason)
