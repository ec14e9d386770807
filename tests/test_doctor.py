"""`raiox doctor` / the reconciliation at start: files without rows are removed (after a grace
period), outbox rows for missing files are dead-lettered, rows without files are reported."""

from __future__ import annotations

import os
import time
from pathlib import Path

from appliance.components import build_components
from appliance.doctor import MISSING_REASON, reconcile
from appliance.storage import StoredObject
from appliance.sync.outbox import enqueue
from tests.fixtures.appliance import appliance_settings


async def test_reconcile_removes_orphans_and_dead_letters_missing_files(
    database_url: str, model_dir: Path
) -> None:
    comps = await build_components(appliance_settings(database_url, model_dir))
    try:
        root = comps.store.root
        old_orphan = root / "uploads" / ("a" * 64 + ".png")
        young_orphan = root / "uploads" / ("b" * 64 + ".png")
        for path in (old_orphan, young_orphan):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"patient image")
        two_hours_ago = time.time() - 7200
        os.utime(old_orphan, (two_hours_ago, two_hours_ago))
        tracked = StoredObject("uploads/" + "c" * 64 + ".png", "c" * 64, 5, "image/png")
        await comps.store.put(tracked.key, b"kept!", "image/png")
        os.utime(comps.store.path(tracked.key), (two_hours_ago, two_hours_ago))
        missing = StoredObject("uploads/" + "d" * 64 + ".png", "d" * 64, 5, "image/png")
        async with comps.database.pool.acquire() as conn:
            await enqueue(conn, tracked)
            await enqueue(conn, missing)

        report = await reconcile(comps.database.pool, comps.store)

        assert report.orphans_removed == [old_orphan.relative_to(root).as_posix()]
        assert not old_orphan.exists()
        assert young_orphan.exists()  # may belong to a request in flight
        assert comps.store.exists(tracked.key)
        assert report.outbox_dead_lettered == [missing.key]
        assert report.rows_without_files == [missing.key]
        state, reason = await comps.database.pool.fetchrow(
            "SELECT state, last_error FROM outbox WHERE storage_key = $1", missing.key
        )
        assert (state, reason) == ("dead", MISSING_REASON)
        again = await reconcile(comps.database.pool, comps.store)
        assert again.orphans_removed == [] and again.outbox_dead_lettered == []
    finally:
        await comps.close()
