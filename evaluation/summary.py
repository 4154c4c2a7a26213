"""The derived metrics of a run (definitions: docs/concepts.md, Metrics), from its matrix and zero-shot row.

A metric whose entries were not evaluated (``evaluate: seen`` leaves R[j-1][j]
empty, so no FWT) is None rather than an error: the rest of the summary stands.
"""
from __future__ import annotations

from statistics import mean

from evaluation.forgetting import (MetricsError, backward_transfer, check_matrix, check_number, final_average,
                                   forgetting, forward_transfer, harmonic_mean, mtil_average, mtil_transfer,
                                   retention, zero_shot_retention)


SWEPT = "@lr="  # the name of a setting of an lr sweep: SETTING@lr=RATE
POLICY = "@policy="  # the name of a setting evaluated under one of several policies: SETTING@policy=P


def swept_setting(setting: str, lr: float) -> str:
    return f"{setting}{SWEPT}{lr:g}"


def policy_setting(setting: str, policy: str) -> str:
    return f"{setting}{POLICY}{policy}"


def _or_none(fn, *args):
    try:
        return fn(*args)
    except MetricsError:
        return None


def derived_metrics(tasks: list[str], matrix: list[list[float | None]], zero_shot: list[float],
                    held_out: dict[str, dict] | None = None) -> dict:
    """final_average, bwt, fwt, forgetting/retention per task, old/new/hAP; per held-out task its zero-shot
    retention and the harmonic mean of its final metric with the final average.

    ``old_metric``: the mean over the old tasks (all but the last) of their
    primary metric after the stream; ``new_metric``: the last task's.

    ``held_out`` maps a held-out task to {"zero_shot": Z, "final": metric after the stream}.
    """
    if not isinstance(tasks, list) or not tasks:
        raise MetricsError(f"derived metrics need the list of task names, got {tasks!r}")
    check_matrix(matrix)
    if len(matrix) != len(tasks) or any(len(row) != len(tasks) for row in matrix):
        raise MetricsError(f"a results matrix for {len(tasks)} tasks has {len(tasks)} rows of {len(tasks)} entries")
    if not isinstance(zero_shot, list) or len(zero_shot) != len(tasks):
        raise MetricsError(f"the zero-shot row needs {len(tasks)} entries, got {zero_shot!r}")
    for j, value in enumerate(zero_shot):
        check_number(value, f"zero-shot entry Z[{j}]")
    for name, v in (held_out or {}).items():
        for key in ("zero_shot", "final"):
            check_number(v.get(key) if isinstance(v, dict) else v, f"held-out task {name!r} {key}")
    last = matrix[-1]
    old = [last[j] for j in range(len(tasks) - 1) if last[j] is not None]
    new = last[len(tasks) - 1]
    per_task_forgetting = _or_none(forgetting, matrix) or [None] * len(tasks)
    per_task_retention = _or_none(retention, matrix) or [None] * len(tasks)
    old_metric = mean(old) if old else None
    average = _or_none(final_average, matrix)
    return {
        "final_average": average,
        "bwt": _or_none(backward_transfer, matrix),
        "fwt": _or_none(forward_transfer, matrix, zero_shot),
        "forgetting": dict(zip(tasks, per_task_forgetting)),
        "retention": dict(zip(tasks, per_task_retention)),
        "old_metric": old_metric,
        "new_metric": new,
        "hap": harmonic_mean(old_metric, new) if old_metric is not None and new is not None else None,
        # the CLIP continual-learning field's table (MTIL): Transfer, Average, Last (= the final average)
        "mtil": {"transfer": _or_none(mtil_transfer, matrix), "average": _or_none(mtil_average, matrix),
                 "last": average},
        "zero_shot_retention": {name: zero_shot_retention(v["final"], v["zero_shot"]) if v["final"] is not None
                                else None for name, v in (held_out or {}).items()},
        # ZiRa's and DitHub's hAP: a held-out task kept (e.g. zero-shot COCO) against the stream's final average
        "held_out_hap": {name: harmonic_mean(v["final"], average) if None not in (v["final"], average) else None
                         for name, v in (held_out or {}).items()},
    }


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% interval (t distribution, n - 1 degrees of freedom) over seeds.

    One value has no interval (None).
    """
    from scipy.stats import t

    if not values:
        raise MetricsError("a mean over seeds needs at least one value")
    for i, v in enumerate(values):
        if check_number(v, f"value #{i}") is None:
            raise MetricsError(f"value #{i} of a mean over seeds is missing (None)")
    n, centre = len(values), mean(values)
    if n == 1:
        return centre, None
    spread = (sum((v - centre) ** 2 for v in values) / (n - 1)) ** 0.5
    return centre, float(t.ppf(0.975, n - 1)) * spread / n ** 0.5
