"""The catalog in the console: list, search and filter implants, create and edit them, archive
or delete them, and add or remove their reference images."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import Redirect

from appliance.accounts import StaffSession
from appliance.admin.auth import AnyRequest, checked_form, require_admin, staff_session
from appliance.admin.views import InvalidFormError, number, optional, page, see_other, text
from appliance.catalog.curation import ImplantQuery
from appliance.catalog.repository import NewImplant
from appliance.components import Components
from appliance.errors import AppError

MAX_REFERENCE_BYTES = 25 * 1024 * 1024
_running: set[asyncio.Task[None]] = set()


class ImportNotFoundError(AppError):
    status_code = 404
    code = "import_not_found"


class CatalogController(Controller):
    path = "/admin"
    tags = ["admin"]
    include_in_schema = False
    dependencies = {"session": Provide(staff_session)}

    @get("/implants")
    async def implants(
        self,
        session: StaffSession,
        components: Components,
        base_url: str,
        q: str = "",
        manufacturer: str = "",
        archived: bool = False,
        offset: Annotated[int, Parameter(ge=0)] = 0,
    ) -> Response[str]:
        query = ImplantQuery(q, manufacturer, archived, offset)
        entries, total = await components.curation.find(query)
        return page(
            "implants.html",
            session,
            base_url=base_url,
            entries=entries,
            total=total,
            query=query,
            manufacturers=await components.curation.manufacturers(),
        )

    @get("/implants/new")
    async def new_implant(self, session: StaffSession, base_url: str) -> Response[str]:
        return page("implant.html", session, base_url=base_url, detail=None)

    @post("/implants")
    async def create(
        self, request: AnyRequest, session: StaffSession, components: Components, base_url: str
    ) -> Redirect:
        form = await checked_form(request, session)
        implant_id = await components.curation.create(_implant(form), actor=session.user.username)
        return see_other(f"{base_url}/admin/implants/{implant_id}")

    @get("/implants/import")
    async def import_form(self, session: StaffSession, base_url: str) -> Response[str]:
        require_admin(session)
        return page("import.html", session, base_url=base_url, job=None)

    @post("/implants/import")
    async def start_import(
        self, request: AnyRequest, session: StaffSession, components: Components, base_url: str
    ) -> Redirect:
        form = await checked_form(request, session)
        require_admin(session)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidFormError("Escolha um arquivo .zip.")
        archive = await upload.read()
        job_id, task = await components.bulk_import.start(archive, actor=session.user.username)
        _running.add(task)  # kept alive until it ends
        task.add_done_callback(_running.discard)
        return see_other(f"{base_url}/admin/imports/{job_id}")

    @get("/imports/{job_id:uuid}")
    async def import_job(
        self, job_id: uuid.UUID, session: StaffSession, components: Components, base_url: str
    ) -> Response[str]:
        job = await components.bulk_import.job(job_id)
        if job is None:
            raise ImportNotFoundError("No such import.")
        return page("import.html", session, base_url=base_url, job=job)

    @get("/implants/{implant_id:int}")
    async def implant(
        self, implant_id: int, session: StaffSession, components: Components, base_url: str
    ) -> Response[str]:
        detail = await components.curation.detail(implant_id)
        return page("implant.html", session, base_url=base_url, detail=detail)

    @post("/implants/{implant_id:int}")
    async def update(
        self,
        implant_id: int,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Redirect:
        form = await checked_form(request, session)
        await components.curation.update(implant_id, _implant(form), actor=session.user.username)
        return see_other(f"{base_url}/admin/implants/{implant_id}")

    @post("/implants/{implant_id:int}/remove")
    async def remove(
        self,
        implant_id: int,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Redirect:
        await checked_form(request, session)
        require_admin(session)
        outcome = await components.curation.remove(implant_id, actor=session.user.username)
        if outcome == "archived":
            return see_other(f"{base_url}/admin/implants/{implant_id}")
        return see_other(f"{base_url}/admin/implants")

    @post("/implants/{implant_id:int}/restore")
    async def restore(
        self,
        implant_id: int,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Redirect:
        await checked_form(request, session)
        require_admin(session)
        await components.curation.restore(implant_id, actor=session.user.username)
        return see_other(f"{base_url}/admin/implants/{implant_id}")

    @post("/implants/{implant_id:int}/references")
    async def add_reference(
        self,
        implant_id: int,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Redirect:
        form = await checked_form(request, session)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidFormError("Escolha um arquivo de imagem.")
        data = await upload.read(MAX_REFERENCE_BYTES + 1)
        if not data or len(data) > MAX_REFERENCE_BYTES:
            raise InvalidFormError("A imagem está vazia ou passa de 25 MiB.")
        await components.curation.add_reference(implant_id, data, actor=session.user.username)
        return see_other(f"{base_url}/admin/implants/{implant_id}")

    @post("/references/{reference_id:int}/remove")
    async def remove_reference(
        self,
        reference_id: int,
        request: AnyRequest,
        session: StaffSession,
        components: Components,
        base_url: str,
    ) -> Redirect:
        await checked_form(request, session)
        require_admin(session)
        implant_id = await components.curation.remove_reference(
            reference_id, actor=session.user.username
        )
        return see_other(f"{base_url}/admin/implants/{implant_id}")


def _implant(form: Any) -> NewImplant:
    return NewImplant(
        name=text(form, "name"),
        manufacturer=text(form, "manufacturer"),
        type=text(form, "type"),
        platform=optional(form, "platform"),
        diameter_mm=number(form, "diameter_mm"),
        length_mm=number(form, "length_mm"),
        notes=optional(form, "notes"),
    )
