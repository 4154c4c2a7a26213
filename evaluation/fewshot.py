"""The few-shot report: the mean primary metric (top-1 accuracy, VQA accuracy) with 95% intervals over seeds, per
method and shot count, and the metric-against-shots plot (from fewshot.json's cells)."""
from __future__ import annotations

from statistics import mean
from typing import Callable

from evaluation.plots import accuracy_against_shots, training_curves
from evaluation.report import fmt_interval, markdown_table
from evaluation.summary import mean_interval

def shots_label(shots: int | None) -> str:
    return "whole split" if shots is None else f"{shots} shot{'s' if shots > 1 else ''}"


def by_seed(cells: list[dict], method: str, shots: int | None, task: str | None = None,
            metric: str = "accuracy", value: Callable[[dict], float] | None = None) -> dict[int, float]:
    """{seed: the ``metric`` of ``method`` at ``shots`` (or ``value(cell)``), averaged over the tasks (or of
    one ``task``)}.

    Seeds missing a task are left out, so an unfinished grid gives no partial averages.
    """
    read = value or (lambda cell: cell["metrics"][metric])
    values: dict[int, dict[str, float]] = {}
    for c in cells:
        if c["method"] == method and c["shots"] == shots and (task is None or c["task"] == task):
            values.setdefault(c["seed"], {})[c["task"]] = read(c)
    tasks = {c["task"] for c in cells} if task is None else {task}
    return {seed: mean(v.values()) for seed, v in sorted(values.items()) if set(v) == tasks}


def paired_differences(cells: list[dict], focus: str, methods: list[str], shots: list,
                       metric: str = "accuracy") -> dict:
    """{method: {shots: (mean, half-width or None, seeds)}}: ``focus`` minus each of ``methods``, seed by seed
    over the seeds both have. A shared seed draws the same shots and data order for both, so the pairing
    removes what the seed does to every method alike."""
    table: dict[str, dict] = {}
    for k in shots:
        ours = by_seed(cells, focus, k, metric=metric)
        for m in methods:
            theirs = by_seed(cells, m, k, metric=metric)
            differences = [ours[seed] - theirs[seed] for seed in ours if seed in theirs]
            if differences:
                centre, half = mean_interval(differences)
                table.setdefault(m, {})[k] = (centre, half, len(differences))
    return table


def summary(cells: list[dict], methods: list[str], shots: list, task: str | None = None,
            metric: str = "accuracy") -> dict:
    """{method: {shots: (mean, half-width or None, seeds)}} for the cells that exist."""
    table: dict[str, dict[int, tuple]] = {}
    for m in methods:
        for k in shots:
            values = list(by_seed(cells, m, k, task, metric).values())
            if values:
                centre, half = mean_interval(values)
                table.setdefault(m, {})[k] = (centre, half, len(values))
    return table


def mean_losses(cells: list[dict], methods: list[str], shots: list) -> dict:
    """{shots: {method: the training loss per step, averaged over the method's cells}} for the cells that record
    their losses (fewshot.json of older versions does not) and share one schedule."""
    curves: dict = {}
    for k in shots:
        for m in methods:
            runs = [c["losses"] for c in cells if c["method"] == m and c["shots"] == k and c.get("losses")]
            length = min(map(len, runs), default=0)
            if length:
                curves.setdefault(k, {})[m] = [mean(run[i] for run in runs) for i in range(length)]
    return curves


def _tenth(curve: list[float], where: float) -> float:
    """The mean loss over the tenth of the schedule that starts at ``where`` (0: first, 0.45: middle, 0.9: last)."""
    width = max(1, len(curve) // 10)
    start = min(int(where * len(curve)), len(curve) - width)
    return mean(curve[start:start + width])


def _last_tenth(cells: list[dict], method: str, shots: int | None) -> str:
    """The last tenth's loss, mean over seeds ± its 95% interval (each seed's the mean over its tasks): how
    far apart two schedules or rates end, against what the seed alone moves."""
    recorded = [c for c in cells if c.get("losses")]
    ends = list(by_seed(recorded, method, shots, value=lambda cell: _tenth(cell["losses"], 0.9)).values())
    return fmt_interval(*mean_interval(ends)) if ends else "–"  # "–": no seed has every task's curve


def _loss_table(cells: list[dict], curves: dict) -> str:
    """Whether training flattened: the mean loss over the first, middle and last tenths of the schedule (the
    last with its interval over seeds)."""
    rows = [[m, shots_label(k), len(c), *(f"{_tenth(c, w):.3f}" for w in (0.0, 0.45)), _last_tenth(cells, m, k)]
            for k, by_method in curves.items() for m, c in by_method.items()]
    return markdown_table(["method", "shots", "steps", "loss, first tenth", "middle tenth",
                           "last tenth (± 95% over seeds)"], rows)


def _training_row(cells: list[dict], method: str) -> list:
    """The rate and schedule that produced a method's row (zero-shot: none) and its training seconds."""
    trained = [c for c in cells if c["method"] == method and "lr" in c]
    lrs = sorted({c["lr"] for c in trained})
    steps = sorted({c["steps"] for c in trained})
    return [method, ", ".join(f"{lr:g}" for lr in lrs) or "–", ", ".join(map(str, steps)) or "–",
            f"{sum(c['train_seconds'] for c in trained):.0f}"]


def _cell(entry) -> str:
    return "–" if entry is None else fmt_interval(entry[0], entry[1])


def _markdown(table: dict, methods: list[str], shots: list) -> str:
    return markdown_table(["method", *map(shots_label, shots)],
                          [[m, *(_cell(table.get(m, {}).get(k)) for k in shots)] for m in methods])


def _tasks(cells: list[dict]) -> list[str]:
    """The tasks of the cells, in the order they were run."""
    return list(dict.fromkeys(c["task"] for c in cells))


def fewshot_report(results: dict, methods: list[str], shots: list) -> str:
    """report.md of a few-shot grid: its summary, the plot, each task's table, training time."""
    cells, metric = results["cells"], results.get("metric", "accuracy")
    tasks = _tasks(cells)
    lines = [fewshot_summary(results, methods, shots), "", f"![{metric} against shots](fewshot.png)", "",
             "## Per task", ""]
    for task in tasks:
        lines += [f"### {task}", "", _markdown(summary(cells, methods, shots, task, metric), methods, shots), ""]
    lines += ["## Training", "", markdown_table(["method", "lr", "steps", "seconds (all cells)"],
                                                [_training_row(cells, m) for m in methods]), ""]
    curves = mean_losses(cells, methods, shots)
    if curves:
        lines += ["## Training loss", "", "Per step, the mean over each method's cells (tasks and seeds).", "",
                  _loss_table(cells, curves), "", "![training loss](curves.png)", ""]
    return "\n".join(lines)


def fewshot_summary(results: dict, methods: list[str], shots: list) -> str:
    """What the command line prints of a finished grid: the mean over tasks per method and shot count."""
    cells, metric, focus = results["cells"], results.get("metric", "accuracy"), results.get("focus")
    seeds = sorted({c["seed"] for c in cells})
    lines = [f"# Few-shot: {results['name']}", "",
             f"Host `{results['host']}`; tasks {', '.join(_tasks(cells))}; seeds {seeds}. `{metric}` on each "
             "task's validation split: mean over the tasks per seed, then the mean over seeds ± the "
             "half-width of its 95% interval (t distribution).", "",
             _markdown(summary(cells, methods, shots, metric=metric), methods, shots)]
    if focus:
        others = [m for m in methods if m != focus]
        lines += ["", f"{focus} minus each method, seed by seed (the mean over the tasks of each), then the mean "
                  "over seeds ± its 95% interval: an interval that excludes 0 separates the two.", "",
                  _markdown(paired_differences(cells, focus, others, shots, metric), others, shots)]
    return "\n".join(lines)


def fewshot_outputs(results: dict, methods: list[str], shots: list) -> dict[str, bytes | str]:
    cells, metric = results["cells"], results.get("metric", "accuracy")
    tasks = _tasks(cells)
    panels = {"mean over tasks": summary(cells, methods, shots, metric=metric)}
    panels.update({task: summary(cells, methods, shots, task, metric) for task in tasks})
    outputs = {"report.md": fewshot_report(results, methods, shots),
               "fewshot.png": accuracy_against_shots(panels, methods, [shots_label(k) for k in shots], shots,
                                                     results["name"], metric)}
    curves = mean_losses(cells, methods, shots)
    if curves:
        outputs["curves.png"] = training_curves({shots_label(k): c for k, c in curves.items()}, results["name"])
    return outputs
