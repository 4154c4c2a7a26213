"""Derived metrics of a run: the hand-computed matrix of test_forgetting, and partial matrices."""
import pytest

from evaluation.forgetting import MetricsError
from evaluation.summary import derived_metrics, mean_interval

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

R = [[0.50, 0.10, 0.05],
     [0.40, 0.60, 0.10],
     [0.30, 0.65, 0.70]]
Z = [0.20, 0.05, 0.02]
TASKS = ["a", "b", "c"]


def test_full_matrix():
    d = derived_metrics(TASKS, R, Z, {"held": {"zero_shot": 0.4, "final": 0.3}})
    assert d["final_average"] == pytest.approx(0.55)
    assert d["bwt"] == pytest.approx(-0.075) and d["fwt"] == pytest.approx(0.065)
    assert d["forgetting"] == pytest.approx({"a": 0.20, "b": -0.05, "c": None})
    assert d["retention"]["a"] == pytest.approx(0.6)
    assert d["old_metric"] == pytest.approx(0.475) and d["new_metric"] == 0.70
    assert d["hap"] == pytest.approx(2 * 0.475 * 0.70 / (0.475 + 0.70))
    assert d["zero_shot_retention"] == pytest.approx({"held": 0.75})


def test_seen_only_matrix_leaves_fwt_empty_but_keeps_the_rest():
    seen = [[0.5, None, None], [0.4, 0.6, None], [0.3, 0.65, 0.7]]
    d = derived_metrics(TASKS, seen, Z)
    assert d["fwt"] is None
    assert d["bwt"] == pytest.approx(-0.075) and d["final_average"] == pytest.approx(0.55)


def test_mean_interval_over_seeds_is_the_t_interval():
    centre, half = mean_interval([1.0, 2.0, 3.0])
    assert centre == 2.0
    assert half == pytest.approx(4.302652729911275 / 3 ** 0.5)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert mean_interval([0.5]) == (0.5, None)
    with pytest.raises(MetricsError, match="missing"):
        mean_interval([0.5, None])


def test_few_shot_report_gives_each_methods_rate_schedule_and_loss_curve_averaged_step_by_step():
    from evaluation.fewshot import fewshot_report, mean_losses

    def cell(method, seed, losses):
        return {"task": "t", "shots": None, "seed": seed, "method": method, "metrics": {"accuracy": 0.5},
                "train_seconds": 1.0, "lr": 0.01, "steps": 10, "losses": losses}

    falling = [10.0 - i for i in range(10)]  # 10 .. 1
    cells = [cell("a", 0, falling), cell("a", 1, [x + 2 for x in falling]), cell("b", 0, [3.0] * 10),
             {**cell("old", 0, []), "losses": None}]  # a cell of a grid written before losses were kept
    curves = mean_losses(cells, ["a", "b", "old"], [None])
    assert curves == {None: {"a": [11.0 - i for i in range(10)], "b": [3.0] * 10}}
    report = fewshot_report({"name": "g", "host": "h", "cells": cells}, ["a", "b"], [None])
    assert "| a | 0.01 | 10 | 2 |" in report  # the rate and schedule that produced the row, seconds summed
    # tenths of a 10-step schedule are single steps: the first, the one at 45% (index 4) and the last; a's
    # last steps are 1 (seed 0) and 3 (seed 1): mean 2, half-width t(0.975, 1) * s / sqrt(2) with s = sqrt(2)
    assert "| a | whole split | 10 | 11.000 | 7.000 | 2.000 ± 12.706 |" in report
    assert "| b | whole split | 10 | 3.000 | 3.000 | 3.000 |" in report  # one seed: no interval


def test_few_shot_loss_table_gives_no_last_tenth_where_no_seed_has_every_tasks_curve():
    from evaluation.fewshot import fewshot_report

    def cell(method, task, losses):
        return {"task": task, "shots": None, "seed": 0, "method": method, "metrics": {"accuracy": 0.5},
                "train_seconds": 1.0, "lr": 0.01, "steps": 10, "losses": losses}

    # b's cell on task u comes from a grid written before losses were kept: its seed has no mean over both tasks
    cells = [cell("a", "t", [2.0] * 10), cell("a", "u", [4.0] * 10), cell("b", "t", [1.0] * 10), cell("b", "u", None)]
    report = fewshot_report({"name": "g", "host": "h", "cells": cells}, ["a", "b"], [None])
    assert "| a | whole split | 10 | 3.000 | 3.000 | 3.000 |" in report
    assert "| b | whole split | 10 | 1.000 | 1.000 | – |" in report


def test_few_shot_paired_differences_are_taken_seed_by_seed_over_the_seeds_both_methods_have():
    from evaluation.fewshot import fewshot_summary, paired_differences

    def cell(method, seed, task, accuracy):
        return {"task": task, "shots": 4, "seed": seed, "method": method, "metrics": {"accuracy": accuracy}}

    # focus beats b by 0.10, 0.20, 0.30 on the mean of the two tasks of seeds 0, 1, 2; b lacks seed 3
    cells = [cell("focus", s, t, 0.5 + 0.1 * s + (0.1 if t == "x" else 0.0)) for s in range(4) for t in "xy"]
    cells += [cell("b", s, t, 0.4 + (0.1 if t == "x" else 0.0)) for s in range(3) for t in "xy"]
    table = paired_differences(cells, "focus", ["b"], [4])
    centre, half, n = table["b"][4]
    assert n == 3 and centre == pytest.approx(0.20)
    assert (centre, half) == pytest.approx(mean_interval([0.10, 0.20, 0.30]))
    summary = fewshot_summary({"name": "g", "host": "h", "focus": "focus", "cells": cells}, ["focus", "b"], [4])
    assert "focus minus each method" in summary and "| b | 0.200 ± " in summary
