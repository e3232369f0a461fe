"""Ordinary least squares for a handful of columns, with the coefficients' standard errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


class SingularFit(ValueError):
    """The columns do not determine the coefficients (too few rows, or a column repeats)."""


@dataclass(frozen=True)
class Fit:
    coefficients: tuple[float, ...]
    stderrs: tuple[float, ...]
    residual_sd: float
    n: int


def _inverse(matrix: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan with partial pivoting; SingularFit when a pivot vanishes."""
    size = len(matrix)
    work = [row[:] + [1.0 if i == j else 0.0 for j in range(size)] for i, row in enumerate(matrix)]
    scale = max(abs(value) for row in matrix for value in row) or 1.0
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(work[r][col]))
        if abs(work[pivot][col]) <= 1e-12 * scale:
            raise SingularFit("the columns are linearly dependent")
        work[col], work[pivot] = work[pivot], work[col]
        head = work[col][col]
        work[col] = [value / head for value in work[col]]
        for row in range(size):
            if row != col and work[row][col]:
                factor = work[row][col]
                work[row] = [a - factor * b for a, b in zip(work[row], work[col], strict=True)]
    return [row[size:] for row in work]


def least_squares(columns: Sequence[Sequence[float]], y: Sequence[float]) -> Fit:
    """y ~ b0 + b1 * columns[0] + b2 * columns[1] + ...: the b, their standard errors and
    the residuals' standard deviation."""
    n, k = len(y), len(columns) + 1
    if n <= k:
        raise SingularFit(f"{n} rows cannot fit {k} coefficients with an error estimate")
    # Centring the columns keeps the normal equations well conditioned (token counts ~1e5).
    means = [math.fsum(col) / n for col in columns]
    centred = [[v - m for v in col] for col, m in zip(columns, means, strict=True)]
    y_mean = math.fsum(y) / n
    gram = [
        [math.fsum(a * b for a, b in zip(ci, cj, strict=True)) for cj in centred] for ci in centred
    ]
    cross = [math.fsum(a * (b - y_mean) for a, b in zip(ci, y, strict=True)) for ci in centred]
    inverse = _inverse(gram) if centred else []
    slopes = [math.fsum(inverse[i][j] * cross[j] for j in range(k - 1)) for i in range(k - 1)]
    intercept = y_mean - math.fsum(s * m for s, m in zip(slopes, means, strict=True))
    residuals = [
        yi - intercept - math.fsum(s * col[i] for s, col in zip(slopes, columns, strict=True))
        for i, yi in enumerate(y)
    ]
    variance = math.fsum(r * r for r in residuals) / (n - k)
    slope_se = [math.sqrt(max(0.0, variance * inverse[i][i])) for i in range(k - 1)]
    # var(intercept) = s^2/n + m' (X'X)^-1 m, with m the columns' means
    spread = math.fsum(
        means[i] * inverse[i][j] * means[j] for i in range(k - 1) for j in range(k - 1)
    )
    intercept_se = math.sqrt(max(0.0, variance * (1.0 / n + spread)))
    return Fit((intercept, *slopes), (intercept_se, *slope_se), math.sqrt(variance), n)
