"""`raiox evaluate`: top-1/top-3 agreement on labelled data, to compare models and
preprocessing choices on real images.

Without labels, a leave-one-out over the catalog itself: every reference image is queried
against all the other references (best reference per implant, as search ranks), using the
stored vectors, so it costs no model time. A reference whose implant has no other reference
cannot be found and is skipped. With a CSV of (image, implant), each image is identified by
the running model against the catalog, exactly as /upload would rank it, but nothing is stored.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import asyncpg
import numpy as np

from appliance.accuracy import Outcome, Scores, score
from appliance.catalog.repository import Catalog
from appliance.errors import AppError
from appliance.identification.identify import Embedder
from appliance.progress import Progress

QUERY_CHUNK = 1024  # queries per similarity block: 1024 x references float32


class LabelsError(AppError):
    status_code = 422
    code = "invalid_labels"


async def leave_one_out(pool: asyncpg.Pool, model_id: str) -> Scores:
    rows = await pool.fetch(
        "SELECT r.implant_id, r.embedding::real[] AS embedding, i.manufacturer, "
        "i.manufacturer || ' ' || i.name AS label "
        "FROM reference_images r JOIN implants i ON i.id = r.implant_id "
        "WHERE r.model_id = $1 AND i.archived_at IS NULL ORDER BY r.implant_id, r.id",
        model_id,
    )
    if not rows:
        return score([])
    vectors = np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])
    implant_ids = np.array([r["implant_id"] for r in rows])
    starts = np.flatnonzero(np.r_[True, implant_ids[1:] != implant_ids[:-1]])
    labels = [rows[s]["label"] for s in starts]
    column_of = np.searchsorted(starts, np.arange(len(rows)), side="right") - 1
    outcomes = []
    for lo in range(0, len(rows), QUERY_CHUNK):
        sims = vectors[lo : lo + QUERY_CHUNK] @ vectors.T
        sims[np.arange(sims.shape[0]), np.arange(lo, lo + sims.shape[0])] = -np.inf
        best = np.maximum.reduceat(sims, starts, axis=1)  # (queries, implants)
        for q in range(best.shape[0]):
            own = column_of[lo + q]
            if not np.isfinite(best[q, own]):
                continue  # the implant's only reference: nothing left to find it by
            top = np.argsort(-best[q], kind="stable")[:3]
            row = rows[lo + q]
            outcomes.append(Outcome(row["label"], row["manufacturer"], [labels[t] for t in top]))
    return score(outcomes)


async def from_labels(
    path: Path,
    *,
    pool: asyncpg.Pool,
    catalog: Catalog,
    embedder: Embedder,
    progress: Callable[[int, str], Progress] = Progress,
) -> Scores:
    """Score the running model on a CSV with columns `image` (path relative to the CSV) and
    `implant` (an id, a name, or 'manufacturer name')."""
    pairs = _read_labels(path)
    implants = await pool.fetch(
        "SELECT id, name, manufacturer, manufacturer || ' ' || name AS label FROM implants"
    )
    model_id = embedder.encoder.model_id
    bar = progress(len(pairs), "evaluate")
    outcomes = []
    for image, wanted in pairs:
        expected = _resolve(wanted, implants)
        try:
            data = (path.parent / image).read_bytes()
        except OSError as exc:
            raise LabelsError(f"Cannot read {image}: {exc.strerror}.") from exc
        embedding = await embedder.embed(data)
        matches = await catalog.search(embedding.vector, model_id, 3)
        ranked = [f"{m.implant.manufacturer} {m.implant.name}" for m in matches]
        outcomes.append(Outcome(expected["label"], expected["manufacturer"], ranked))
        bar.advance()
    bar.close()
    return score(outcomes)


def _read_labels(path: Path) -> list[tuple[str, str]]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise LabelsError(f"Cannot read {path}: {exc.strerror}.") from exc
    pairs = [(str(r.get("image") or "").strip(), str(r.get("implant") or "").strip()) for r in rows]
    for n, (image, implant) in enumerate(pairs, start=2):
        if not image or not implant:
            raise LabelsError(f"{path}:{n}: every row needs `image` and `implant`.")
    return pairs


def _resolve(wanted: str, implants: list[asyncpg.Record]) -> asyncpg.Record:
    key = wanted.lower()
    for row in implants:
        if (wanted.isdigit() and row["id"] == int(wanted)) or key in (
            row["name"].lower(),
            row["label"].lower(),
        ):
            return row
    raise LabelsError(f"No implant in the catalog is called {wanted!r}.")


def format_scores(scores: Scores) -> str:
    data = scores.as_json()
    if not data["n"]:
        return "nothing to evaluate (no labelled images, or no implant with two references)"
    lines = [f"n={data['n']}  top-1 {data['top1']:.3f}  top-3 {data['top3']:.3f}", ""]
    for manufacturer, tally in data["per_manufacturer"].items():
        lines.append(
            f"  {manufacturer:<28} n={tally['n']:<5} top-1 {tally['top1']:.3f}  "
            f"top-3 {tally['top3']:.3f}"
        )
    if data["confusions"]:
        lines += ["", "worst confusions (expected -> answered first):"]
        lines += [
            f"  {c['count']:>4} x {c['expected']} -> {c['predicted']}" for c in data["confusions"]
        ]
    return "\n".join(lines)
