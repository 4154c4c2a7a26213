"""The few-shot report: mean top-1 accuracy with 95% intervals over seeds, per method and shot count, and the
accuracy-against-shots plot (from fewshot.json's cells)."""
from __future__ import annotations

from statistics import mean

from evaluation.plots import accuracy_against_shots
from evaluation.report import markdown_table
from evaluation.summary import mean_interval

METRIC = "accuracy"


def seed_means(cells: list[dict], method: str, shots: int, task: str | None = None) -> list[float]:
    """Per seed: the accuracy of ``method`` at ``shots``, averaged over the tasks (or of one ``task``).

    Seeds missing a task are left out, so an unfinished grid gives no partial averages.
    """
    by_seed: dict[int, dict[str, float]] = {}
    for c in cells:
        if c["method"] == method and c["shots"] == shots and (task is None or c["task"] == task):
            by_seed.setdefault(c["seed"], {})[c["task"]] = c["metrics"][METRIC]
    tasks = {c["task"] for c in cells} if task is None else {task}
    return [mean(v.values()) for _, v in sorted(by_seed.items()) if set(v) == tasks]


def summary(cells: list[dict], methods: list[str], shots: list[int], task: str | None = None) -> dict:
    """{method: {shots: (mean, half-width or None, seeds)}} for the cells that exist."""
    table: dict[str, dict[int, tuple]] = {}
    for m in methods:
        for k in shots:
            values = seed_means(cells, m, k, task)
            if values:
                centre, half = mean_interval(values)
                table.setdefault(m, {})[k] = (centre, half, len(values))
    return table


def _cell(entry) -> str:
    if entry is None:
        return "–"
    centre, half, _ = entry
    return f"{centre:.3f}" if half is None else f"{centre:.3f} ± {half:.3f}"


def _markdown(table: dict, methods: list[str], shots: list[int]) -> str:
    return markdown_table(["method", *(f"{k} shot{'s' if k > 1 else ''}" for k in shots)],
                          [[m, *(_cell(table.get(m, {}).get(k)) for k in shots)] for m in methods])


def _tasks(cells: list[dict]) -> list[str]:
    """The tasks of the cells, in the order they were run."""
    return list(dict.fromkeys(c["task"] for c in cells))


def fewshot_report(results: dict, methods: list[str], shots: list[int]) -> str:
    cells = results["cells"]
    tasks = _tasks(cells)
    seeds = sorted({c["seed"] for c in cells})
    seconds = {m: sum(c["train_seconds"] for c in cells if c["method"] == m) for m in methods}
    lines = [f"# Few-shot: {results['name']}", "",
             f"Host `{results['host']}`; tasks {', '.join(tasks)}; seeds {seeds}. Top-1 accuracy on each task's "
             "validation split: mean over the tasks per seed, then the mean over seeds ± the half-width of its "
             "95% interval (t distribution).", "",
             _markdown(summary(cells, methods, shots), methods, shots), "",
             "![accuracy against shots](fewshot.png)", "", "## Per task", ""]
    for task in tasks:
        lines += [f"### {task}", "", _markdown(summary(cells, methods, shots, task), methods, shots), ""]
    lines += ["## Training time", "", markdown_table(["method", "seconds (all cells)"],
                                                     [[m, f"{seconds[m]:.0f}"] for m in methods]), ""]
    return "\n".join(lines)


def fewshot_outputs(results: dict, methods: list[str], shots: list[int]) -> dict[str, bytes | str]:
    cells = results["cells"]
    tasks = _tasks(cells)
    panels = {"mean over tasks": summary(cells, methods, shots)}
    panels.update({task: summary(cells, methods, shots, task) for task in tasks})
    return {"report.md": fewshot_report(results, methods, shots),
            "fewshot.png": accuracy_against_shots(panels, methods, shots, results["name"])}
