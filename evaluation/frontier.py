"""An lr sweep over seeds as frontiers: methods compared at matched new-task metric, not at one rate each.

Each swept setting of each seed gives a curve through its rates: x = the new task's metric, y = old-task
retention. A level of the new-task metric that every curve of every seed reaches is a fair footing; the
retention there is interpolated linearly along the curve (at its first crossing, rates ascending), then
summarised over seeds. Settings that differ only in their last step (the same earlier modules, trained
once per seed) are also compared seed by seed with the first setting listed on the same base, which
removes the spread of the shared base.

summary.json's ``frontier``: {"levels": [L, ...], "curves": {setting: [{"lr", "new_metric": STAT,
"old_retention": STAT}]}, "matched": {setting: [STAT per level]}, "paired": [{"setting", "against",
"difference": [STAT per level]}]}, STAT as in evaluation.seeds.
"""
from __future__ import annotations

import json

from evaluation.summary import SWEPT

LEVELS = (0.25, 0.5, 0.75)  # where the levels sit between the lowest and highest new-task metric all reach


def curve(points: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """(lr, new metric, retention) points -> (new metric, retention) in ascending lr."""
    return [(new, kept) for _, new, kept in sorted(points)]


def retention_at(points: list[tuple[float, float]], level: float) -> float | None:
    """Retention where the curve first reaches ``level`` of the new-task metric (None if it never does)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if min(x0, x1) <= level <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (y1 - y0) * (level - x0) / (x1 - x0)
    return points[0][1] if len(points) == 1 and points[0][0] == level else None


def common_levels(curves: list[list[tuple[float, float]]]) -> list[float]:
    """New-task levels inside the range that every curve spans (none when their ranges do not overlap)."""
    low = max(min(x for x, _ in c) for c in curves)
    high = min(max(x for x, _ in c) for c in curves)
    if high <= low:
        return []
    return sorted({round(low + (high - low) * q, 3) for q in LEVELS} - {round(low, 3), round(high, 3)}) or [
        low + (high - low) / 2]


def frontier_summary(runs: dict[int, dict[str, dict]], rows: dict[int, list[dict]], over_seeds) -> dict | None:
    """``runs``: {seed: {stream: results.json}}; ``rows``: {seed: compat rows}; ``over_seeds`` makes a STAT
    of per-seed values. None when the study swept no rate."""
    seeds = sorted(rows)
    swept = list(dict.fromkeys(r["swept"] for r in rows[seeds[0]] if r["swept"]))
    if not swept:
        return None
    points = {(seed, s): [(r["lr"], r["new_metric"], r["old_retention"]) for r in rows[seed] if r["swept"] == s]
              for seed in seeds for s in swept}
    complete = {key: p for key, p in points.items() if all(v is not None for point in p for v in point)}
    curves = {key: curve(p) for key, p in complete.items()}
    levels = common_levels(list(curves.values())) if len(curves) == len(points) else []
    at = {key: [retention_at(c, level) for level in levels] for key, c in curves.items()}
    summary = {"levels": levels,
               "curves": {s: [{"lr": lr, "new_metric": over_seeds([points[seed, s][i][1] for seed in seeds]),
                               "old_retention": over_seeds([points[seed, s][i][2] for seed in seeds])}
                              for i, (lr, _, _) in enumerate(points[seeds[0], s])] for s in swept},
               "matched": {s: [over_seeds([at[seed, s][i] for seed in seeds]) for i in range(len(levels))]
                           for s in swept},
               "paired": []}
    reference: dict[str, str] = {}  # earlier steps -> the first setting listed with them
    for s in swept:
        first = reference.setdefault(_prefix(runs[seeds[0]], s), s)
        if first != s:
            summary["paired"].append({"setting": s, "against": first, "difference": [
                over_seeds([at[seed, s][i] - at[seed, first][i] for seed in seeds]) for i in range(len(levels))]})
    return summary


def _prefix(results_by_stream: dict[str, dict], swept: str) -> str:
    """What a swept setting's streams have before their last step: tasks, methods, training, policy."""
    r = next(r for name, r in results_by_stream.items() if name.startswith(swept + SWEPT))
    return json.dumps([r["tasks"][:-1], r["methods"][:-1], [m["train"] for m in r["modules"][:-1]], r["policy"]],
                      sort_keys=True)
