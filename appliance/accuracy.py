"""How often the appliance was right: top-1 and top-3 agreement of its answers with confirmed
labels, overall, per manufacturer and over time. The same scoring serves `raiox evaluate`,
so the console and the command line count alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import asyncpg

MAX_CONFUSIONS = 10


@dataclass(frozen=True)
class Outcome:
    """One labelled image: the confirmed implant and the ranked implants that were answered."""

    expected: str
    manufacturer: str
    ranked: Sequence[str]
    day: date | None = None


@dataclass
class Tally:
    n: int = 0
    top1: int = 0
    top3: int = 0

    def add(self, outcome: Outcome) -> None:
        self.n += 1
        self.top1 += bool(outcome.ranked) and outcome.ranked[0] == outcome.expected
        self.top3 += outcome.expected in outcome.ranked[:3]

    def ratios(self) -> dict[str, float | int | None]:
        return {"n": self.n, "top1": _ratio(self.top1, self.n), "top3": _ratio(self.top3, self.n)}


@dataclass
class Scores:
    overall: Tally = field(default_factory=Tally)
    per_manufacturer: dict[str, Tally] = field(default_factory=dict)
    per_day: dict[date, Tally] = field(default_factory=dict)
    confusions: Counter[tuple[str, str]] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        """The shape `raiox evaluate --json` prints."""
        overall = self.overall.ratios()
        return {
            "n": overall["n"],
            "top1": overall["top1"],
            "top3": overall["top3"],
            "per_manufacturer": {m: t.ratios() for m, t in sorted(self.per_manufacturer.items())},
            "confusions": [
                {"expected": expected, "predicted": predicted, "count": count}
                for (expected, predicted), count in self.confusions.most_common(MAX_CONFUSIONS)
            ],
        }


def score(outcomes: Iterable[Outcome]) -> Scores:
    scores = Scores()
    for outcome in outcomes:
        scores.overall.add(outcome)
        scores.per_manufacturer.setdefault(outcome.manufacturer, Tally()).add(outcome)
        if outcome.day is not None:
            scores.per_day.setdefault(outcome.day, Tally()).add(outcome)
        top = outcome.ranked[0] if outcome.ranked else "(nenhum)"
        if top != outcome.expected:
            scores.confusions[(outcome.expected, top)] += 1
    return scores


async def confirmed_scores(pool: asyncpg.Pool) -> Scores:
    """Agreement of the stored answers with every confirmed label, by submission day."""
    rows = await pool.fetch(
        "SELECT i.manufacturer || ' ' || i.name AS expected, i.manufacturer, "
        "(s.created_at AT TIME ZONE 'UTC')::date AS day, array(SELECT mi.manufacturer || ' ' "
        "|| mi.name FROM matches m JOIN implants mi ON mi.id = m.implant_id "
        "WHERE m.submission_image_id = l.submission_image_id ORDER BY m.rank) AS ranked "
        "FROM image_labels l JOIN implants i ON i.id = l.implant_id "
        "JOIN submission_images si ON si.id = l.submission_image_id "
        "JOIN submissions s ON s.id = si.submission_id"
    )
    return score(
        Outcome(r["expected"], r["manufacturer"], list(r["ranked"]), r["day"]) for r in rows
    )


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
