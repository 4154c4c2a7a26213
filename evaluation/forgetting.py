"""Continual-learning metrics over a results matrix (definitions: docs/concepts.md, Metrics).

R[i][j] is task j's metric after training task i (i = 0..T-1); Z[j] is task j's
metric before any training (the zero-shot row). Entries may be None where a
task was not evaluated; the functions below need the entries they read.
"""
from __future__ import annotations

import math
from statistics import mean
from continual.errors import ContinualError

Matrix = list[list[float]]


class MetricsError(ContinualError, ValueError):
    """A results matrix of the wrong shape, or missing an entry a metric needs."""


def check_number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetricsError(f"{where} must be a finite number or None, got {value!r}")
    return float(value)


def check_matrix(matrix: Matrix) -> int:
    """Rows of a results matrix: a list of T lists of at least T numbers (or None)."""
    if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
        raise MetricsError(f"a results matrix is a list of rows (lists), got {type(matrix).__name__}")
    rows = len(matrix)
    if rows == 0 or any(len(row) < rows for row in matrix):
        raise MetricsError(f"results matrix needs T rows of at least T entries, got {[len(r) for r in matrix]}")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            check_number(value, f"results matrix entry R[{i}][{j}]")
    return rows


def _entry(matrix: Matrix, i: int, j: int) -> float:
    value = matrix[i][j]
    if value is None:
        raise MetricsError(f"results matrix entry R[{i}][{j}] was not evaluated")
    return float(value)


def final_average(matrix: Matrix) -> float:
    """A_T = mean_j R[T-1][j] over the trained tasks."""
    last = check_matrix(matrix) - 1
    return mean(_entry(matrix, last, j) for j in range(last + 1))


def retention(matrix: Matrix) -> list[float | None]:
    """R[T-1][j] / R[j][j] per task (None where R[j][j] is 0)."""
    last = check_matrix(matrix) - 1
    out = []
    for j in range(last + 1):
        learned = _entry(matrix, j, j)
        out.append(_entry(matrix, last, j) / learned if learned else None)
    return out


def forgetting(matrix: Matrix) -> list[float | None]:
    """Chaudhry et al.: max_{i<T-1} R[i][j] - R[T-1][j], for j < T-1 (None for the last task)."""
    last = check_matrix(matrix) - 1
    out = []
    for j in range(last + 1):
        if j == last:
            out.append(None)
            continue
        earlier = [_entry(matrix, i, j) for i in range(last) if matrix[i][j] is not None]
        if not earlier:
            raise MetricsError(f"forgetting of task {j} needs an evaluated entry before the last row")
        best = max(earlier)
        out.append(best - _entry(matrix, last, j))
    return out


def backward_transfer(matrix: Matrix) -> float | None:
    """BWT = mean_{j<T-1} (R[T-1][j] - R[j][j]); None for a single task."""
    last = check_matrix(matrix) - 1
    if last == 0:
        return None
    return mean(_entry(matrix, last, j) - _entry(matrix, j, j) for j in range(last))


def forward_transfer(matrix: Matrix, zero_shot: list[float]) -> float | None:
    """FWT = mean_{j>0} (R[j-1][j] - Z[j]); None for a single task."""
    rows = check_matrix(matrix)
    if not isinstance(zero_shot, list) or len(zero_shot) < rows:
        raise MetricsError(f"the zero-shot row must be a list of at least {rows} entries, got {zero_shot!r}")
    for j in range(rows):
        if check_number(zero_shot[j], f"zero-shot entry Z[{j}]") is None:
            raise MetricsError(f"zero-shot entry Z[{j}] was not evaluated")
    if rows == 1:
        return None
    return mean(_entry(matrix, j - 1, j) - float(zero_shot[j]) for j in range(1, rows))


def zero_shot_retention(after: float, zero_shot: float) -> float | None:
    """A held-out task's metric after the stream over its zero-shot metric."""
    return after / zero_shot if zero_shot else None


def harmonic_mean(old: float, new: float) -> float:
    """ZiRa's hAP: 2ab / (a + b) of the old-task and new-task metrics (0 when both are 0)."""
    return 2 * old * new / (old + new) if old + new else 0.0


def mtil_transfer(matrix: Matrix) -> float | None:
    """MTIL's Transfer (Zheng et al., 2023): per task j > 0, the mean of R[i][j] over the rows i < j (the
    task before it is learned, after the tasks before it), then the mean over those tasks; None for one task."""
    rows = check_matrix(matrix)
    if rows == 1:
        return None
    return mean(mean(_entry(matrix, i, j) for i in range(j)) for j in range(1, rows))


def mtil_average(matrix: Matrix) -> float:
    """MTIL's Average: the mean of every entry R[i][j] of the T x T matrix."""
    rows = check_matrix(matrix)
    return mean(_entry(matrix, i, j) for i in range(rows) for j in range(rows))
