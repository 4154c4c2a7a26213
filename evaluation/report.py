"""report.md and plots from results.json: one run, a study of settings, or a comparison of runs."""
from __future__ import annotations

import json
from pathlib import Path

from continual.errors import RunError
from evaluation.plots import frontier_plot, matrix_heatmap, retention_scatter
from evaluation.summary import POLICY, SWEPT

# In a run folder (continual.run_folder); summary.json: of a run over seeds (evaluation.seeds)
RESULTS, COMPAT, REPORT, SUMMARY = "results.json", "compat.json", "report.md", "summary.json"

METRIC_TITLES = {"mAP": "COCO mAP@[.5:.95]", "accuracy": "top-1 accuracy", "vqa_accuracy": "VQA accuracy"}


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_interval(centre, half) -> str:
    """``mean ± half-width`` of a 95% interval ("–" for no mean; the interval left out where there is none)."""
    return fmt(centre) if centre is None or half is None else f"{fmt(centre)} ± {fmt(half)}"


def stat(s: dict) -> str:
    """A figure over seeds: mean ± half-width of its interval."""
    return fmt_interval(s["mean"], s["interval"])


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def upgrade(results: dict) -> dict:
    """Results written before task kinds (a ``coco`` section, mAP everywhere) in today's shape."""
    if "metrics" not in results and "coco" in results:
        results = {**results, "metrics": results.pop("coco")}
        results.setdefault("metric_names", {t: "mAP" for t in [*results["tasks"], *results["held_out"]]})
        d = results["derived"]
        d.setdefault("old_metric", d.pop("old_map", None))
        d.setdefault("new_metric", d.pop("new_map", None))
    return results


def metric_label(results: dict) -> str:
    """The metric name the run's tasks share (e.g. ``mAP``), or ``metric`` when kinds are mixed."""
    names = set(results["metric_names"][t] for t in results["tasks"])
    return names.pop() if len(names) == 1 else "metric"


def compat_rows(results_by_setting: dict[str, dict]) -> list[dict]:
    """One row per setting: the old tasks (all but the last) and the new (last) task, after the stream."""
    rows = []
    for setting, r in results_by_setting.items():
        d = r["derived"]
        old = r["tasks"][:-1]
        kept = [d["retention"][t] for t in old if d["retention"][t] is not None]
        rows.append({"setting": setting, "policy": r["policy"],
                     "swept": setting.split(SWEPT)[0] if SWEPT in setting else None,
                     "lr": r["modules"][-1]["train"]["lr"] if r["methods"][-1] != "none" else None,
                     "metric": metric_label(r), "old_task": "+".join(old),
                     "new_task": r["tasks"][-1], "old_metric": d["old_metric"], "new_metric": d["new_metric"],
                     "old_retention": sum(kept) / len(kept) if kept else None, "hap": d["hap"]})
    return rows


def run_report(results: dict) -> str:
    """report.md of one stream: its summary, then its modules and the matrix plot."""
    parts = [run_summary(results),
             "## Modules",
             markdown_table(["task", "method", "trainable params", "fraction of host", "final loss", "note"],
                            [[m["task"], m["method"], f"{m['trainable_params']:,}", f"{m['fraction']:.4%}",
                              fmt(m["final_loss"], 2), f"reused from {m['reused_from']}" if m["reused_from"] else ""]
                             for m in results["modules"]]),
             "![results matrix](plots/matrix.png)"]
    return "\n\n".join(parts) + "\n"


def run_summary(results: dict) -> str:
    """What the command line prints of a finished stream: the matrix, the derived metrics, held-out tasks."""
    tasks, d, metric = results["tasks"], results["derived"], metric_label(results)
    matrix_rows = [["zero-shot", *map(fmt, results["zero_shot"])]]
    matrix_rows += [[f"after {t} ({m})", *map(fmt, row)]
                    for t, m, row in zip(tasks, results["methods"], results["matrix"])]
    parts = [
        f"# Run `{results['name']}`",
        f"Host `{results['host']}` (fingerprint {results['host_fingerprint'][:12]}), composition policy "
        f"`{results['policy']}`, evaluated: {results['evaluate']}.",
        f"## Results matrix ({METRIC_TITLES.get(metric, 'each task its primary metric')})",
        "Row i: after training step i; column j: task j. The first row is before any training.",
        markdown_table(["", *(f"{t} ({results['metric_names'][t]})" if metric == "metric" else t for t in tasks)],
                       matrix_rows),
        *_not_evaluated_note(results),
        "## Derived metrics",
        markdown_table(["final average", "BWT", "FWT", f"old {metric}", f"new {metric}", "harmonic mean (old, new)"],
                       [[fmt(d["final_average"]), fmt(d["bwt"]), fmt(d["fwt"]), fmt(d["old_metric"]), fmt(d["new_metric"]),
                         fmt(d["hap"])]]),
        markdown_table(["task", "retention", "forgetting"],
                       [[t, fmt(d["retention"][t]), fmt(d["forgetting"][t])] for t in tasks]),
        *_mtil_table(results),
    ]
    if results["held_out"]:
        hap = d.get("held_out_hap", {})
        parts += ["## Held-out tasks (never trained)",
                  markdown_table(["task", "zero-shot", "after the stream", "zero-shot retention",
                                  "hAP with the final average"],
                                 [[t, fmt(v["zero_shot"]), fmt(v["final"]), fmt(d["zero_shot_retention"][t]),
                                   fmt(hap.get(t))] for t, v in results["held_out"].items()])]
    parts += _data_notes(results)
    return "\n\n".join(parts)


def _mtil_table(results: dict) -> list[str]:
    """MTIL's three figures, for classification streams (the CLIP continual-learning field reports them)."""
    mtil = results["derived"].get("mtil")  # (results written before them have none)
    if mtil is None or metric_label(results) != "accuracy":
        return []
    return ["MTIL's figures: Transfer, each task's mean accuracy before it is learned; Average, every cell's mean; "
            "Last, the final row's mean.",
            markdown_table(["Transfer", "Average", "Last"],
                           [[fmt(mtil["transfer"]), fmt(mtil["average"]), fmt(mtil["last"])]])]


def _not_evaluated_note(results: dict) -> list[str]:
    held = [v for held in results["held_out"].values() for v in held["after_each"]]
    if None not in [v for row in results["matrix"] for v in row] + held:
        return []
    return ["–: not evaluated there. `evaluate: seen` leaves the tasks not yet trained out of each row; a task "
            "that joined the stream when the run was resumed is not evaluated on the rows written before it."]


def _data_notes(results: dict) -> list[str]:
    """What loading left out of each task's data (real exports' isolated bad annotations, supercategories)."""
    lines = []
    for task, record in results.get("data", {}).items():
        for split, skipped in record.get("skipped_annotations", {}).items():
            faults = ", ".join(f"{n} {fault.replace('_', ' ')}" for fault, n in sorted(skipped["counts"].items()))
            lines.append(f"- {task} ({split}): {sum(skipped['counts'].values())} annotation(s) skipped ({faults}); "
                         f"first: {'; '.join(f'`{m}`' for m in skipped['first'])}")
        if record.get("left_out_categories"):
            lines.append(f"- {task}: categories {', '.join(record['left_out_categories'])} left out of the prompt "
                         "(supercategories without a box; `data.keep_supercategories: true` keeps them)")
    return ["## Data", "Left out when the data were loaded (`data.strict: true` refuses bad annotations instead):",
            "\n".join(lines)] if lines else []


def rows_metric(rows: list[dict]) -> str:
    metrics = {r["metric"] for r in rows}
    return metrics.pop() if len(metrics) == 1 else "metric"


def policies_side_by_side(rows: list[dict], cell=fmt) -> list[str]:
    """A study run under several policies (``policies``): one line per setting, the new-task metric and the
    old-task retention under each policy (``cell`` formats a figure); nothing for a study of one policy."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    if len(policies) < 2:
        return []
    settings: dict[str, dict] = {}
    for r in rows:
        settings.setdefault(r["setting"].replace(POLICY + r["policy"], ""), {})[r["policy"]] = r
    metric = rows_metric(rows)
    header = ["setting", *(f"{figure} ({p})" for p in policies for figure in (f"new {metric}", "old retention"))]
    body = [[name, *(cell(by_policy[p][f]) if p in by_policy else "–"
                     for p in policies for f in ("new_metric", "old_retention"))] for name, by_policy in settings.items()]
    return ["## Policies side by side",
            "The same trained modules evaluated under each composition policy: `all` (every module on), `own` "
            "(the evaluated task's modules and those below them), `route` (the modules of the tasks whose "
            "phrases the prompt names, and those below them).", markdown_table(header, body)]


def study_report(name: str, rows: list[dict]) -> str:
    """report.md of a study: its summary, the scatter plot, the frontier of an lr sweep, links to settings."""
    metric = rows_metric(rows)
    links = "\n".join(f"- [{r['setting']}]({r['setting']}/report.md)" for r in rows)
    frontier = ""
    if any(r["swept"] for r in rows):
        swept = sorted((r for r in rows if r["swept"]), key=lambda r: (r["swept"], r["lr"]))
        frontier = ("## Retention-plasticity frontier\n\nEach setting's last module trained at every rate of "
                    "`lr_sweep`: compare methods at equal new-task metric, not at one rate.\n\n"
                    + markdown_table(["setting", "lr", f"new {metric}", "old retention"],
                                     [[r["swept"], f"{r['lr']:g}", fmt(r["new_metric"]), fmt(r["old_retention"])]
                                      for r in swept])
                    + "\n\n![frontier](plots/frontier.png)\n\n")
    return (f"{study_summary(name, rows)}\n\n"
            f"![old-task retention vs new-task {metric}](plots/retention_vs_new.png)\n\n{frontier}"
            f"## Setting folders\n\n{links}\n")


def study_summary(name: str, rows: list[dict]) -> str:
    """What the command line prints of a finished study: the policies side by side and the settings' table."""
    metric = rows_metric(rows)
    table = markdown_table(["setting", "old task", f"old {metric}", "new task", f"new {metric}", "old retention",
                            "hAP"],
                           [[r["setting"], r["old_task"], fmt(r["old_metric"]), r["new_task"], fmt(r["new_metric"]),
                             fmt(r["old_retention"]), fmt(r["hap"])] for r in rows])
    side_by_side = "".join(f"{part}\n\n" for part in policies_side_by_side(rows))
    return (f"# Study `{name}`\n\nEach setting is a stream of its own; old mAP is the old task's mAP after the "
            f"new task was trained, old retention that over its mAP when it was learned.\n\n{side_by_side}"
            f"## Settings\n\n{table}")


def run_outputs(results: dict) -> dict[str, bytes | str]:
    """Files of a run folder made from its results: {relative path: content}."""
    return {"plots/matrix.png": matrix_heatmap(results), REPORT: run_report(results)}


def study_outputs(name: str, results_by_setting: dict[str, dict]) -> dict[str, bytes | str]:
    """Files of a study folder: compat.json (one row per setting), the scatter plot, report.md (and the
    frontier plot of an lr sweep)."""
    rows = compat_rows(results_by_setting)
    files = {COMPAT: json.dumps(rows, indent=2) + "\n",
             "plots/retention_vs_new.png": retention_scatter(rows, name, rows_metric(rows)),
             REPORT: study_report(name, rows)}
    if any(r["swept"] for r in rows):
        curves: dict[str, list[tuple]] = {}
        for r in rows:
            if r["swept"]:
                curves.setdefault(r["swept"], []).append((r["lr"], r["new_metric"], None, r["old_retention"], None))
        files["plots/frontier.png"] = frontier_plot(curves, name, rows_metric(rows))
    return files


def load_runs(run_dir: Path) -> dict[str, dict]:
    """{name: results} of a run folder: itself, or each setting of a study."""
    run_dir = Path(run_dir)
    if (run_dir / RESULTS).is_file():
        results = upgrade(json.loads((run_dir / RESULTS).read_text()))
        return {results["name"]: results}
    found = {p.parent.name: upgrade(json.loads(p.read_text())) for p in sorted(run_dir.glob(f"*/{RESULTS}"))}
    if not found:
        raise RunError(f"{run_dir}: no {RESULTS} in it or in its setting folders (not a finished run)")
    # the study's own order (compat.json), not the folders' alphabetical one
    order = [row["setting"] for row in json.loads((run_dir / COMPAT).read_text())] \
        if (run_dir / COMPAT).is_file() else []
    return {name: found[name] for name in order if name in found} | found


COMPARED = ("final_average", "bwt", "fwt", "old_metric", "new_metric", "hap")


def _comparison_row(label: str, results: dict, figures: list[str]) -> list[str]:
    stream = " → ".join(f"{t}:{m}" for t, m in zip(results["tasks"], results["methods"]))
    return [label, stream, results["policy"], metric_label(results), *figures]


def comparison(run_dirs: list[Path]) -> str:
    """One row per run (per setting of a study); a run over seeds gives mean ± 95% interval per figure."""
    rows = []
    for run_dir in run_dirs:
        summary_file = Path(run_dir) / SUMMARY
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            first = load_runs(Path(run_dir) / f"seed-{summary['seeds'][0]}")  # the streams' tasks and methods
            for name, stream in summary["streams"].items():
                label = f"{run_dir}/{name}" if len(first) > 1 else f"{run_dir} (seeds {summary['seeds']})"
                rows.append(_comparison_row(label, first[name], [stat(stream["derived"][k]) for k in COMPARED]))
            continue
        runs = load_runs(run_dir)
        for name, r in runs.items():
            label = str(run_dir) if len(runs) == 1 else f"{run_dir}/{name}"
            rows.append(_comparison_row(label, r, [fmt(r["derived"][k]) for k in COMPARED]))
    return markdown_table(["run", "stream", "policy", "metric", "final avg", "BWT", "FWT", "old", "new", "hAP"], rows)
