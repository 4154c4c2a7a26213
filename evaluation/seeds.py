"""A config run over several seeds: every derived metric (and every compatibility row's figure) as a mean
with the half-width of its 95% interval (t distribution over seeds) beside the per-seed values.

summary.json: {"name", "seeds", "streams": {stream: {"derived": {metric: STAT or {task: STAT}}}},
"compat": [row with STAT figures] (studies)}, STAT = {"mean", "interval", "values"}; a metric a seed left
empty (None) has mean and interval None.
"""
from __future__ import annotations

import json

from evaluation.frontier import frontier_summary
from evaluation.plots import frontier_plot, retention_scatter
from evaluation.report import (COMPAT, REPORT, SUMMARY, compat_rows, fmt, markdown_table, policies_side_by_side,
                               rows_metric, stat)
from evaluation.summary import mean_interval

COMPAT_FIGURES = ("old_metric", "new_metric", "old_retention", "hap")


def over_seeds(values: list) -> dict:
    """{"mean", "interval", "values"} of one figure across seeds (None where any seed has none)."""
    if any(v is None for v in values):
        return {"mean": None, "interval": None, "values": values}
    centre, half = mean_interval(values)
    return {"mean": centre, "interval": half, "values": values}


def _summarise(per_seed: list):
    """Scalars become STATs; mappings are summarised key by key."""
    if isinstance(per_seed[0], dict):
        return {k: _summarise([d.get(k) for d in per_seed]) for k in per_seed[0]}
    return over_seeds(per_seed)


def seeds_summary(name: str, runs: dict[int, dict[str, dict]], study: bool) -> dict:
    """``runs``: {seed: {stream: results.json}} -> summary.json's content."""
    seeds = sorted(runs)
    streams = list(runs[seeds[0]])
    summary = {"name": name, "seeds": seeds, "streams": {
        s: {"tasks": runs[seeds[0]][s]["tasks"], "derived": _summarise([runs[k][s]["derived"] for k in seeds])}
        for s in streams}}
    if study:
        rows = {k: compat_rows(runs[k]) for k in seeds}
        summary["compat"] = [{**{k: v for k, v in row.items() if k not in COMPAT_FIGURES},
                              **{f: over_seeds([rows[k][i][f] for k in seeds]) for f in COMPAT_FIGURES}}
                             for i, row in enumerate(rows[seeds[0]])]
        frontier = frontier_summary(runs, rows, over_seeds)
        if frontier:
            summary["frontier"] = frontier
    return summary


def seeds_report(summary: dict) -> str:
    """report.md over seeds: the summary, then each stream's derived metrics with their per-seed values."""
    parts = [seeds_summary_text(summary)]
    for name, stream in summary["streams"].items():
        d = stream["derived"]
        rows = [[key, stat(d[key]), ", ".join(fmt(v) for v in d[key]["values"])]
                for key in ("final_average", "bwt", "fwt", "old_metric", "new_metric", "hap")]
        rows += [[f"{what} {task}", stat(d[what][task]), ", ".join(fmt(v) for v in d[what][task]["values"])]
                 for what in ("retention", "forgetting") for task in stream["tasks"]]
        rows += [[f"MTIL {key}", stat(value), ", ".join(fmt(v) for v in value["values"])]
                 for key, value in d.get("mtil", {}).items()]
        parts += [f"## `{name}`", markdown_table(["metric", "mean ± 95%", "per seed"], rows)]
    return "\n\n".join(parts) + "\n"


def seeds_summary_text(summary: dict) -> str:
    """The head of report.md over seeds (a study's settings with intervals): what the command line prints of a
    study over seeds."""
    seeds = summary["seeds"]
    parts = [f"# `{summary['name']}` over seeds {', '.join(map(str, seeds))}",
             "Mean ± half-width of the 95% interval (t distribution over seeds); each seed's run is in "
             "`seed-N/`. The seed sets the data order and the modules' initialisation; the data stay the same."]
    if "compat" in summary:
        parts += [*policies_side_by_side(summary["compat"], stat), "## Settings", markdown_table(
            ["setting", "old task", "old", "new task", "new", "old retention", "hAP"],
            [[r["setting"], r["old_task"], stat(r["old_metric"]), r["new_task"], stat(r["new_metric"]),
              stat(r["old_retention"]), stat(r["hap"])] for r in summary["compat"]]),
            "![old-task retention against the new task's metric, over seeds](plots/retention_vs_new.png)"]
    if "frontier" in summary:
        parts += frontier_text(summary["frontier"], rows_metric(summary["compat"]))
    return "\n\n".join(parts)


def frontier_text(frontier: dict, metric: str) -> list[str]:
    """The lr sweep's part of the report: retention at matched new-task levels, paired differences."""
    levels = frontier["levels"]
    parts = ["## Retention at matched new-task " + metric,
             "Each seed's curve through the swept rates (x: new-task " + metric + ", y: old-task retention), "
             "interpolated at levels of the new-task metric that every curve of every seed reaches; mean ± 95% "
             "interval over seeds.", "![frontier](plots/frontier.png)"]
    if not levels:
        return parts + ["No level of the new-task metric is reached by every curve: widen `lr_sweep`."]
    header = ["setting", *(f"retention at new {metric} {level:.3f}" for level in levels)]
    parts.append(markdown_table(header, [[s, *map(stat, at)] for s, at in frontier["matched"].items()]))
    if frontier["paired"]:
        parts += ["Each setting against the first one listed with the same earlier steps (the same base modules "
                  "in each seed), seed by seed: its retention minus the other's (an interval that excludes 0 "
                  "separates them).",
                  markdown_table(["setting", "minus", *(f"at {level:.3f}" for level in levels)],
                                 [[p["setting"], p["against"], *map(stat, p["difference"])]
                                  for p in frontier["paired"]])]
    return parts


def seeds_outputs(summary: dict) -> dict[str, str]:
    """summary.json, report.md and, for a study, compat.json with the rows' figures over seeds."""
    files = {SUMMARY: json.dumps(summary, indent=2) + "\n", REPORT: seeds_report(summary)}
    if "compat" in summary:
        files[COMPAT] = json.dumps(summary["compat"], indent=2) + "\n"
    if "compat" in summary:
        files["plots/retention_vs_new.png"] = retention_scatter(
            [{"setting": r["setting"], "policy": r["policy"], "new_metric": r["new_metric"]["mean"],
              "old_retention": r["old_retention"]["mean"], "new_interval": r["new_metric"]["interval"],
              "retention_interval": r["old_retention"]["interval"]} for r in summary["compat"]],
            f"{summary['name']}: mean ± 95% interval over seeds", rows_metric(summary["compat"]))
    if "frontier" in summary:
        curves = {s: [(p["lr"], p["new_metric"]["mean"], p["new_metric"]["interval"], p["old_retention"]["mean"],
                       p["old_retention"]["interval"]) for p in points]
                  for s, points in summary["frontier"]["curves"].items()}
        files["plots/frontier.png"] = frontier_plot(curves, summary["name"], rows_metric(summary["compat"]),
                                                    summary["frontier"]["levels"])
    return files
