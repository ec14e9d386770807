"""Replication benchmark: the outbox worker against moto's S3 server on loopback and a real
Postgres (pgserver), so it measures the worker's own cost (claim, digest, HEAD, PUT, HEAD,
mark done), not a network.

    python tests/bench/replication.py [--small N] [--small-kib K] [--big-mib M]

Prints one JSON object: small objects per second with 1 and with 4 lanes, the seconds for
one multipart object, and the cost of a presigned URL. Over a real uplink each small object
costs about three round trips plus its bytes; lanes overlap the round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)  # tests/bench/http.py would shadow the stdlib `http`

import boto3
from moto.server import ThreadedMotoServer

from appliance.database import Database
from appliance.settings import Settings, SpacesSettings, SyncSettings
from appliance.storage import LocalImageStore, sha256_hex
from appliance.sync import outbox
from appliance.sync.outbox import Outbox
from appliance.sync.spaces import SpacesClient
from appliance.sync.worker import Replicator


async def _enqueue(database: Database, store: LocalImageStore, count: int, size: int) -> None:
    for _ in range(count):
        data = os.urandom(size)
        stored = await store.put(f"uploads/{sha256_hex(data)}.png", data, "image/png")
        async with database.pool.acquire() as conn:
            await outbox.enqueue(conn, stored)


async def _drain(
    database: Database, store: LocalImageStore, spaces: SpacesClient, lanes: int
) -> float:
    worker = Replicator(Outbox(database.pool), store, spaces, SyncSettings(concurrency=lanes))
    start = time.perf_counter()
    result = await worker.run_once()
    elapsed = time.perf_counter() - start
    assert result.unavailable is None and result.failed == 0, result
    return elapsed


async def bench(args: argparse.Namespace, pg_uri: str, endpoint: str, root: Path) -> dict[str, Any]:
    settings = Settings(
        data_dir=root / "data",
        database_url=pg_uri,
        spaces=SpacesSettings(
            endpoint=endpoint, bucket="raiox-bench", access_key="bench", secret_key="bench-secret"
        ),
    )
    database = await Database.open(settings)
    store = LocalImageStore(settings.images_dir)
    spaces = SpacesClient(settings.spaces)
    out: dict[str, Any] = {"small_kib": args.small_kib, "small_count": args.small}
    try:
        for lanes in (1, 4):
            await _enqueue(database, store, args.small, args.small_kib * 1024)
            seconds = await _drain(database, store, spaces, lanes)
            out[f"small_objects_per_s_{lanes}_lanes"] = round(args.small / seconds, 1)
        await _enqueue(database, store, 1, args.big_mib * 1024 * 1024)
        out["big_mib"] = args.big_mib
        out["big_multipart_s"] = round(await _drain(database, store, spaces, 1), 3)
        start = time.perf_counter()
        for _ in range(1000):
            await spaces.presign_get("uploads/x.png", 300)
        out["presign_us"] = round((time.perf_counter() - start) * 1000, 1)
    finally:
        await database.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--small-kib", type=int, default=256)
    parser.add_argument("--big-mib", type=int, default=24)
    args = parser.parse_args()

    import pgserver

    root = Path(tempfile.mkdtemp(prefix="raiox-bench-sync-", dir="/tmp"))
    pg = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
            region_name="us-east-1",
        ).create_bucket(Bucket="raiox-bench")
        pg.psql("CREATE DATABASE raiox_bench;")
        result = asyncio.run(bench(args, pg.get_uri(database="raiox_bench"), endpoint, root))
    finally:
        moto.stop()
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
