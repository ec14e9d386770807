"""Bulk catalog import from the console: a zip holding a manifest (catalog.csv or
catalog.json, as `raiox catalog import` reads them) and its images.

The archive is checked and unpacked before anything is recorded (no member may leave the
folder, and the unpacked size is bounded), then imported in the background by the same
`import_catalog` the CLI runs; its progress is written to `import_jobs` twice a second so any
worker can show it. A big catalog is better imported with the CLI on the appliance itself:
the console takes what one upload may carry (RAIOX_MAX_UPLOAD_BYTES).
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

import asyncpg

from appliance.audit import record
from appliance.catalog.importer import ReferenceSpec, import_catalog, read_manifest
from appliance.catalog.repository import Catalog
from appliance.errors import AppError
from appliance.identification.identify import Embedder
from appliance.progress import Progress
from appliance.storage import LocalImageStore

MANIFEST_NAMES = ("catalog.csv", "catalog.json")
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 20_000
FLUSH_SECONDS = 0.5
log = logging.getLogger(__name__)


class ArchiveError(AppError):
    status_code = 422
    code = "invalid_archive"


@dataclass(frozen=True)
class ImportJob:
    id: uuid.UUID
    started_by: str
    started_at: datetime
    state: str
    total: int
    done: int
    message: str | None


class _Counter(Progress):
    """import_catalog's progress, kept in memory and flushed to the database by the job."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n

    def close(self) -> None:
        pass


class BulkImport:
    def __init__(
        self,
        pool: asyncpg.Pool,
        catalog: Catalog,
        embedder: Embedder,
        store: LocalImageStore,
        work_dir: Path,
    ) -> None:
        self._pool = pool
        self._catalog = catalog
        self._embedder = embedder
        self._store = store
        self._work_dir = work_dir

    async def start(self, archive: bytes, *, actor: str) -> tuple[uuid.UUID, asyncio.Task[None]]:
        """Unpack and read the manifest (refusing a bad archive at once), then import in the
        background; returns the job id and its task (which the caller keeps alive)."""
        job_id = uuid.uuid4()
        folder = self._work_dir / str(job_id)
        try:
            manifest = await asyncio.to_thread(_unpack, archive, folder)
            specs = read_manifest(manifest)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        total = sum(len(s.images) for s in specs)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO import_jobs (id, started_by, total) VALUES ($1, $2, $3)",
                job_id,
                actor,
                total,
            )
            await record(conn, actor, "catalog.import", f"import:{job_id}", {"images": total})
        task = asyncio.create_task(self._run(job_id, specs, folder))
        return job_id, task

    async def job(self, job_id: uuid.UUID) -> ImportJob | None:
        row = await self._pool.fetchrow("SELECT * FROM import_jobs WHERE id = $1", job_id)
        return None if row is None else ImportJob(**dict(row))

    async def _run(self, job_id: uuid.UUID, specs: list[ReferenceSpec], folder: Path) -> None:
        counters: list[_Counter] = []

        def progress(total: int, label: str) -> Progress:
            counters.append(_Counter(total, label))
            return counters[-1]

        work = asyncio.create_task(
            import_catalog(
                specs,
                pool=self._pool,
                catalog=self._catalog,
                embedder=self._embedder,
                store=self._store,
                progress=progress,
            )
        )
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=FLUSH_SECONDS)
                done = counters[0].done if counters else 0
                await self._pool.execute(
                    "UPDATE import_jobs SET done = $2 WHERE id = $1", job_id, done
                )
            report = work.result()
            state = "done"
            message = (
                f"{report.implants} implantes; {report.embedded} imagens novas, "
                f"{report.skipped} já presentes"
            )
        except AppError as exc:
            state, message = "failed", exc.detail
        except Exception as exc:  # recorded for the page; the log has the traceback
            log.exception("catalog import %s failed", job_id)
            state, message = "failed", f"erro inesperado ({type(exc).__name__})"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        done = counters[0].done if counters else 0
        await self._pool.execute(
            "UPDATE import_jobs SET state = $2, done = $3, message = $4 WHERE id = $1",
            job_id,
            state,
            done,
            message,
        )


def _unpack(archive: bytes, folder: Path) -> Path:
    """Regular files only, inside `folder`, within the size bound; returns the manifest."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile as exc:
        raise ArchiveError("O arquivo enviado não é um .zip válido.") from exc
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_MEMBERS:
            raise ArchiveError(f"O .zip tem mais de {MAX_MEMBERS} arquivos.")
        if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
            raise ArchiveError("O .zip descompactado passa de 1 GiB; use `raiox catalog import`.")
        folder.mkdir(parents=True, mode=0o700)
        for member in members:
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise ArchiveError(f"Caminho inválido no .zip: {member.filename!r}.")
            target = folder.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    manifests = [folder / n for n in MANIFEST_NAMES if (folder / n).is_file()]
    if not manifests:
        raise ArchiveError("O .zip precisa de catalog.csv ou catalog.json na raiz.")
    return manifests[0]
