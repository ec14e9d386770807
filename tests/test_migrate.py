"""`raiox migrate`, as the deploy runs it before the api replicas start: whoever races for the
migrations, each is applied once (an advisory lock), and a later pass finds nothing to do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from appliance.database import load_migrations

RAIOX = Path(sys.executable).parent / "raiox"


def _migrate(database_url: str, data_dir: Path) -> subprocess.Popen[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "RAIOX_DATABASE_URL": database_url,
        "RAIOX_DATA_DIR": str(data_dir),
    }
    return subprocess.Popen(
        [RAIOX, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


async def _recorded(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [row["name"] for row in rows]


def test_racing_migrations_apply_each_once(database_url: str, tmp_path: Path) -> None:
    shipped = [m.name for m in load_migrations()]
    racers = [_migrate(database_url, tmp_path) for _ in range(2)]
    outputs = sorted(racer.communicate(timeout=120)[0].strip().splitlines()[-1] for racer in racers)
    assert all(racer.returncode == 0 for racer in racers), outputs
    assert outputs == [f"applied {', '.join(shipped)}", "no pending migrations"]
    assert asyncio.run(_recorded(database_url)) == shipped
    again = _migrate(database_url, tmp_path)
    assert again.communicate(timeout=120)[0].strip().splitlines()[-1] == "no pending migrations"
