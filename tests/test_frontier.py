"""Frontiers of an lr sweep over seeds: matched-level interpolation, common levels, paired differences."""
import pytest

from evaluation.frontier import common_levels, frontier_summary, retention_at
from evaluation.seeds import over_seeds, seeds_outputs, seeds_summary
from evaluation.summary import derived_metrics

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`


def test_retention_is_interpolated_at_the_first_crossing():
    points = [(0.1, 0.9), (0.3, 0.5), (0.2, 0.4)]  # ascending lr; the new metric rises, then falls
    assert retention_at(points, 0.2) == pytest.approx(0.9 - 0.4 * 0.5)
    assert retention_at(points, 0.25) == pytest.approx(0.9 - 0.4 * 0.75)  # the first segment, not the last
    assert retention_at(points, 0.35) is None and retention_at(points, 0.05) is None


def test_levels_lie_where_every_curve_reaches():
    assert common_levels([[(0.0, 1), (0.4, 0)], [(0.2, 1), (0.6, 0)]]) == [0.25, 0.3, 0.35]
    assert common_levels([[(0.0, 1), (0.1, 0)], [(0.2, 1), (0.6, 0)]]) == []


def _results(setting, lr, new, kept, base="adapter", seed=0):
    """A two-task stream's results.json, reduced to what the frontier and the report read."""
    tasks, matrix = ["base", "aquarium"], [[0.5, 0.02], [0.5 * kept, new]]
    return {"name": setting, "policy": "all", "tasks": tasks, "methods": [base, "sdpt"],
            "metric_names": {"base": "mAP", "aquarium": "mAP"},
            "modules": [{"train": {"lr": 0.003, "seed": seed}}, {"train": {"lr": lr, "seed": seed}}],
            "derived": derived_metrics(tasks, matrix, [0.01, 0.02])}


def _study(offset):
    """Seed runs of two settings on one base, swept at two rates: B keeps `offset` more than A everywhere."""
    runs = {}
    for seed in (0, 1, 2):
        runs[seed] = {}
        for setting, extra in (("a", 0.0), ("b", offset)):
            for lr, new, kept in ((0.1, 0.0 + 0.01 * seed, 0.9), (1.0, 0.4, 0.1)):
                name = f"{setting}@lr={lr:g}"
                runs[seed][name] = _results(name, lr, new, kept + extra, seed=seed)
    return runs


def test_frontier_summary_matches_levels_and_pairs_settings_by_seed():
    summary = seeds_summary("study", _study(0.05), study=True)
    frontier = summary["frontier"]
    assert frontier["levels"] == [0.115, 0.21, 0.305]
    level = frontier["levels"][1]
    expected = [0.9 - 0.8 * (level - 0.01 * seed) / (0.4 - 0.01 * seed) for seed in (0, 1, 2)]
    assert frontier["matched"]["a"][1]["values"] == pytest.approx(expected)
    (pair,) = frontier["paired"]
    assert (pair["setting"], pair["against"]) == ("b", "a")
    assert [d["mean"] for d in pair["difference"]] == pytest.approx([0.05] * 3)
    assert [d["interval"] for d in pair["difference"]] == pytest.approx([0.0] * 3, abs=1e-12)
    files = seeds_outputs(summary)
    assert files["plots/frontier.png"][:4] == b"\x89PNG"
    assert "## Retention at matched new-task mAP" in files["report.md"]


def test_settings_on_different_bases_are_not_paired():
    runs = _study(0.05)
    for seed in runs:
        for name, r in runs[seed].items():
            if name.startswith("b@"):
                r["methods"][0] = "vpt"
    assert seeds_summary("study", runs, study=True)["frontier"]["paired"] == []


def test_no_frontier_without_a_sweep():
    runs = {seed: {"a": _results("a", 0.3, 0.2, 0.5)} for seed in (0, 1)}
    assert "frontier" not in seeds_summary("study", runs, study=True)
    assert over_seeds([None, 0.1])["mean"] is None
