"""Catalog benchmark: the top-3-distinct-implants search at 1k, 10k and 100k references in a
real Postgres + pgvector (pgserver), exact scan against HNSW, plus `catalog import` of real
images against the encoder's own batch-8 throughput.

    python tests/bench/catalog.py [--sizes 1000,10000,100000] [--queries 300] [--no-import]

Prints one JSON object (keys are read by other tools; do not rename them):
{"search": {"<n>": {"exact": {"p50_ms", "p99_ms"}, "hnsw": {"p50_ms", "p99_ms", "recall_at_3",
"build_s"}, "size_mb"}}, "import_refs_per_s", "encoder_images_per_s"}. Targets at 100k
references: HNSW p50 <= 5 ms, p99 <= 15 ms, recall@3 >= 0.99; import >= 80 % of the encoder.

The synthetic catalog looks like a real one (see DESIGN.md, "Catalog at scale"): manufacturers
-> lines -> sizes (one implant each) -> 3 to 7 reference views, with cosines ~0.9 between views
of one implant and ~0.7 between sizes of one line. Unrelated random clusters would be easier
for an index and say nothing about the runners-up. Queries are fresh views of random implants,
noisier than the references (a radiograph, not a catalog render). recall@3 is the share of the
exact answer's three implants (computed in numpy over all vectors) that the HNSW path returns.
Latencies are client-side through `Catalog.search`, the code the appliance runs, one query at
a time, after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# Replace this script's folder on the path: tests/bench/http.py would shadow the stdlib `http`.
sys.path[0] = str(ROOT)

import asyncpg
from pgvector.asyncpg import register_vector

from appliance.catalog.repository import Catalog, HnswParams
from appliance.database import apply_migrations
from tests.bench.encoder_rate import images_per_s, sample_pixels
from tests.fixtures.appliance import quiet_progress
from tests.fixtures.synthetic_catalog import exact_top, load, make_queries, synthetic_catalog

MODEL_ID = "bench"
RAIOX = [sys.executable, "-m", "appliance"]


def backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_search(
    catalog: Catalog, backend: int, queries: np.ndarray, k: int = 3
) -> tuple[dict[str, float], list[list[int]]]:
    for query in queries[:5]:  # warm-up: caches, plans, the stats
        await catalog.search(query, MODEL_ID, k)
    times, answers = [], []
    cpu = backend_cpu_seconds(backend)
    for query in queries:
        start = time.perf_counter()
        matches = await catalog.search(query, MODEL_ID, k)
        times.append((time.perf_counter() - start) * 1000)
        answers.append([m.implant.id - 1 for m in matches])
    cpu = backend_cpu_seconds(backend) - cpu
    # Wall time on a shared machine counts other people's work too; CPU time does not.
    print(f"  server CPU {cpu * 1000 / len(queries):.2f} ms/query", file=sys.stderr)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
    }, answers


def recall(answers: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(a) & set(t)) for a, t in zip(answers, truth, strict=True))
    return round(hits / sum(len(t) for t in truth), 4)


async def bench_size(
    server: Any,
    references: int,
    queries: int,
    params: HnswParams,
    sweep: list[tuple[int, int]],
) -> dict[str, Any]:
    name = f"bench_catalog_{references}"
    server.psql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};")
    url = server.get_uri(database=name)
    conn = await asyncpg.connect(url)
    await apply_migrations(conn)
    await conn.close()
    # One connection: every query runs in one server process, whose CPU time is read.
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, init=register_vector)
    try:
        backend = await pool.fetchval("SELECT pg_backend_pid()")
        synthetic = synthetic_catalog(references, seed=references)
        async with pool.acquire() as conn:
            await load(conn, synthetic, MODEL_ID)
        qs = make_queries(synthetic, queries, seed=references + 1)
        truth = exact_top(synthetic, qs, 3)
        # The exact scan is slow at 100k: fewer queries there, enough for a p99 to mean something.
        exact_qs = qs[: max(50, min(queries, 3_000_000 // references))]
        exact = Catalog(pool, hnsw_threshold=references, hnsw=params)
        exact_stats, exact_answers = await timed_search(exact, backend, exact_qs)
        exact_recall = recall(exact_answers, truth[: len(exact_qs)])
        indexed = Catalog(pool, hnsw_threshold=0, hnsw=params)
        start = time.perf_counter()
        await indexed.ensure_index()
        build_s = round(time.perf_counter() - start, 2)
        hnsw_stats, hnsw_answers = await timed_search(indexed, backend, qs)
        for ef_search, candidates in sweep:  # other search settings on the same index
            other = Catalog(
                pool,
                hnsw_threshold=0,
                hnsw=replace(params, ef_search=ef_search, candidates=candidates),
            )
            stats, answers = await timed_search(other, backend, qs)
            print(
                f"  ef_search {ef_search} candidates {candidates}: {stats} "
                f"recall {recall(answers, truth)}",
                file=sys.stderr,
            )
        size = await pool.fetchval(
            "SELECT pg_total_relation_size('reference_images') + pg_total_relation_size('implants')"
        )
    finally:
        await pool.close()
        server.psql(f"DROP DATABASE IF EXISTS {name};")
    print(f"{references}: exact agrees with numpy at {exact_recall}, {params}", file=sys.stderr)
    return {
        "exact": exact_stats,
        "hnsw": {**hnsw_stats, "recall_at_3": recall(hnsw_answers, truth), "build_s": build_s},
        "size_mb": round(size / 2**20, 1),
    }


IMPORT_VIEWS = (range(0, 4), range(4, 8))  # two imports of 32 implants x 4 rendered views


def ensure_model(model_dir: Path) -> None:
    if not (model_dir / "manifest.json").is_file():
        subprocess.run(
            [*RAIOX, "model", "build", "--weights", "random", "--no-fp32", "--out", str(model_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def write_manifest(folder: Path, views: range) -> Path:
    """The demo catalog's rendered implants as files + a CSV manifest, as a user would have."""
    from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_reference

    folder.mkdir(parents=True)
    with (folder / "catalog.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "manufacturer", "type", "image"])
        for n, implant in enumerate(DEMO_IMPLANTS):
            for view in views:
                image = png_bytes(render_reference(implant, view))
                (folder / f"{n}-{view}.png").write_bytes(image)
                writer.writerow(
                    [implant.name, implant.manufacturer, implant.type, f"{n}-{view}.png"]
                )
    return folder / "catalog.csv"


async def import_throughput(server: Any, model_dir: Path, root: Path) -> dict[str, float]:
    """`raiox catalog import` (read_manifest + import_catalog, as the CLI runs them) against
    the encoder's batch-8 images/s, alternated in one process: medians of each."""
    from appliance.catalog.importer import read_manifest
    from appliance.components import build_components
    from appliance.settings import Settings

    manifests = [write_manifest(root / f"import-{n}", v) for n, v in enumerate(IMPORT_VIEWS)]
    server.psql("DROP DATABASE IF EXISTS bench_import; CREATE DATABASE bench_import;")
    settings = Settings(
        data_dir=root / "data",
        model_dir=model_dir,
        allow_untrained_model=True,
        database_url=server.get_uri(database="bench_import"),
    )
    comps = await build_components(settings)
    try:
        pixels = sample_pixels(comps.encoder)
        cpu = time.process_time()
        encoder = [images_per_s(comps.encoder, pixels)]
        encoder_cpu = (time.process_time() - cpu) / (len(pixels) * 13)
        imported, import_cpu = [], []
        for manifest in manifests:
            specs = read_manifest(manifest)
            start, cpu = time.perf_counter(), time.process_time()
            report = await comps.import_catalog(specs, quiet_progress)
            imported.append(report.embedded / (time.perf_counter() - start))
            import_cpu.append((time.process_time() - cpu) / report.embedded)
            encoder.append(images_per_s(comps.encoder, pixels))
    finally:
        await comps.close()
    # On a shared machine the rates swing with other people's load; CPU time per image of
    # this process (decoding, hashing, ORT, the client side of the database) much less.
    print(
        f"import {imported} refs/s, encoder {encoder} images/s; CPU ms per image: encoder "
        f"{encoder_cpu * 1000:.1f}, import {[round(c * 1000, 1) for c in import_cpu]}",
        file=sys.stderr,
    )
    return {
        "import_refs_per_s": round(statistics.median(imported), 1),
        "encoder_images_per_s": round(statistics.median(encoder), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-import", action="store_true", help="search only")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "build" / "bench-model")
    parser.add_argument("--m", type=int, default=HnswParams.m)
    parser.add_argument("--ef-construction", type=int, default=HnswParams.ef_construction)
    parser.add_argument("--ef-search", type=int, default=HnswParams.ef_search)
    parser.add_argument("--candidates", type=int, default=HnswParams.candidates)
    parser.add_argument("--sweep", default="", help="also try EF:CANDIDATES,... (stderr)")
    args = parser.parse_args()
    sweep = [tuple(int(v) for v in pair.split(":")) for pair in args.sweep.split(",") if pair]
    params = HnswParams(args.m, args.ef_construction, args.ef_search, args.candidates)
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="raiox-bench-catalog-", dir="/tmp"))
    server = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
    result: dict[str, Any] = {"search": {}}
    try:
        for size in (int(s) for s in args.sizes.split(",") if s):
            result["search"][str(size)] = asyncio.run(
                bench_size(server, size, args.queries, params, sweep)  # type: ignore[arg-type]
            )
        if not args.no_import:
            ensure_model(args.model_dir)
            result.update(asyncio.run(import_throughput(server, args.model_dir, root)))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
