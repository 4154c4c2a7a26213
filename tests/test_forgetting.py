"""Continual metrics: hand-computed matrices and agreement with Avalanche's functional forgetting."""
import random

import pytest

from evaluation.forgetting import (MetricsError, backward_transfer, final_average, forgetting, forward_transfer,
                                   harmonic_mean, mtil_average, mtil_transfer, retention, zero_shot_retention)

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

# Rows: after training task 0, 1, 2. Columns: tasks 0, 1, 2.
R = [[0.50, 0.10, 0.05],
     [0.40, 0.60, 0.10],
     [0.30, 0.65, 0.70]]
Z = [0.20, 0.05, 0.02]


def test_hand_computed_values():
    assert final_average(R) == pytest.approx((0.30 + 0.65 + 0.70) / 3)
    assert retention(R) == pytest.approx([0.30 / 0.50, 0.65 / 0.60, 1.0])
    # task 0: best before the end 0.50, now 0.30; task 1: best 0.60, now 0.65 (negative forgetting)
    assert forgetting(R)[:2] == pytest.approx([0.20, -0.05]) and forgetting(R)[2] is None
    assert backward_transfer(R) == pytest.approx(((0.30 - 0.50) + (0.65 - 0.60)) / 2)
    assert forward_transfer(R, Z) == pytest.approx(((0.10 - 0.05) + (0.10 - 0.02)) / 2)
    assert zero_shot_retention(0.45, 0.5) == pytest.approx(0.9)
    assert harmonic_mean(0.532, 0.587) == pytest.approx(2 * 0.532 * 0.587 / (0.532 + 0.587))
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_mtil_metrics_by_hand():
    # Transfer: task 1 before it is learned (row 0: 0.10); task 2 before it (rows 0 and 1: 0.05, 0.10)
    assert mtil_transfer(R) == pytest.approx((0.10 + (0.05 + 0.10) / 2) / 2)
    assert mtil_average(R) == pytest.approx(sum(map(sum, R)) / 9)
    assert mtil_transfer([[0.4]]) is None and mtil_average([[0.4]]) == pytest.approx(0.4)
    with pytest.raises(MetricsError, match=r"R\[0\]\[1\] was not evaluated"):
        mtil_transfer([[0.5, None], [0.4, 0.6]])


def test_mtil_in_derived_metrics():
    from evaluation.summary import derived_metrics

    d = derived_metrics(["a", "b", "c"], R, Z)
    assert d["mtil"] == pytest.approx({"transfer": 0.0875, "average": sum(map(sum, R)) / 9,
                                       "last": (0.30 + 0.65 + 0.70) / 3})
    seen = derived_metrics(["a", "b"], [[0.5, None], [0.4, 0.6]], [0.2, 0.1])  # evaluate: seen
    assert seen["mtil"]["transfer"] is None and seen["mtil"]["average"] is None


def test_single_task_and_bad_matrices():
    assert backward_transfer([[0.4]]) is None and forward_transfer([[0.4]], [0.1]) is None
    with pytest.raises(MetricsError, match="T rows"):
        final_average([[0.1], [0.2]])
    with pytest.raises(MetricsError, match=r"R\[1\]\[0\] was not evaluated"):
        backward_transfer([[0.1, None], [None, 0.3]])


def _random_matrix(rng, size):
    return [[rng.random() for _ in range(size)] for _ in range(size)]


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_avalanche_functional_forgetting(seed):
    from avalanche.evaluation.functional import forgetting as avalanche_forgetting

    rng = random.Random(seed)
    size = rng.randint(2, 7)
    matrix = _random_matrix(rng, size)
    theirs = avalanche_forgetting(matrix)  # F[t][k] = R[k][k] - R[t][k] for t > k
    last = size - 1
    # BWT is minus the mean of Avalanche's final-row forgetting over the old tasks
    assert backward_transfer(matrix) == pytest.approx(-sum(theirs[last][:last]) / last)
    # Chaudhry's max-based forgetting is never below Avalanche's, and equals it
    # whenever a task's best old score was the one right after learning it
    ours = forgetting(matrix)
    for j in range(last):
        assert ours[j] >= theirs[last][j] - 1e-12
        peaked = max(matrix[i][j] for i in range(last)) == matrix[j][j]
        if peaked:
            assert ours[j] == pytest.approx(theirs[last][j])
    # make every column peak on its diagonal: then the two agree exactly
    for j in range(size):
        for i in range(size):
            if i != j:
                matrix[i][j] = min(matrix[i][j], matrix[j][j])
    theirs = avalanche_forgetting(matrix)
    assert forgetting(matrix)[:last] == pytest.approx(list(theirs[last][:last]))
