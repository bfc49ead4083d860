"""The medcouple in O(n log n): Johnson & Mizoguchi's selection in a sorted matrix, compiled by
numba.

The medcouple is the median of the kernel h(i, j) = (u_i + l_j) / (u_i - l_j) over the values
above (u) and below (l) the median, centred on it. statsmodels builds the n/2 x n/2 kernel
(O(n^2): 8 ms for 2,000 values, 2 s for 100,000); this walks it without building it. The kernel
is non-decreasing along both of its axes, so the number of its entries below any value is
counted in one staircase walk (O(n)), and the k-th smallest entry is found by repeatedly
splitting the candidates at the weighted median of their rows' middle entries, each split
dropping at least a quarter of them. Every entry is computed with the same two float
operations as the full kernel, so the result is bit-identical to statsmodels' (tests).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit("float64(float64[::1], float64[::1], int64, int64, int64)", cache=True, nogil=True)
def _entry(upper, lower, ties, i, j):
    """h(i, j); in the block of the values on the median, statsmodels' sign rule."""
    q = len(lower)
    if i < ties and j >= q - ties:
        s = i + j - (q - ties) - (ties - 1)
        return 1.0 if s > 0 else (-1.0 if s < 0 else 0.0)
    return (upper[i] + lower[j]) / (upper[i] - lower[j])


@njit("int64(float64[::1], float64[::1], int64, float64, int64[::1], boolean)", cache=True)
def _count(upper, lower, ties, value, out, inclusive):
    """Per row: entries below ``value`` (or at most ``value`` when ``inclusive``) into ``out``;
    returns their sum. Rows count fewer as the row index grows: one staircase walk."""
    j, total = len(lower), 0
    for i in range(len(upper)):
        while j > 0:
            h = _entry(upper, lower, ties, i, j - 1)
            if h > value or (h == value and not inclusive):
                j -= 1
            else:
                break
        out[i] = j
        total += j
    return total


@njit("float64(float64[::1], float64[::1], int64, int64)", cache=True, nogil=True)
def _select(upper, lower, ties, k):
    """The k-th smallest (0-based) entry of the kernel."""
    p, q = len(upper), len(lower)
    left = np.zeros(p, np.int64)  # first candidate column of each row
    right = np.full(p, q, np.int64)  # one past the last
    below, through = 0, p * q  # entries left of the candidates, and through them
    less = np.empty(p, np.int64)
    most = np.empty(p, np.int64)
    middles = np.empty(p, np.float64)
    weights = np.empty(p, np.int64)
    while through - below > p:
        rows = 0
        for i in range(p):
            if left[i] < right[i]:
                middles[rows] = _entry(upper, lower, ties, i, (left[i] + right[i] - 1) // 2)
                weights[rows] = right[i] - left[i]
                rows += 1
        order = np.argsort(middles[:rows])
        half, acc, pivot = (through - below) / 2, 0, middles[order[rows - 1]]
        for r in order:
            acc += weights[r]
            if acc >= half:
                pivot = middles[r]
                break
        n_less = _count(upper, lower, ties, pivot, less, False)
        n_most = _count(upper, lower, ties, pivot, most, True)
        if k < n_less:
            right[:] = np.minimum(right, less)
            through = n_less
        elif k >= n_most:
            left[:] = np.maximum(left, most)
            below = n_most
        else:
            return pivot
    rest = np.empty(through - below, np.float64)
    n = 0
    for i in range(p):
        for j in range(left[i], right[i]):
            rest[n] = _entry(upper, lower, ties, i, j)
            n += 1
    return np.sort(rest[:n])[k - below]


def medcouple(values: np.ndarray) -> float:
    """Hubert & Vandervieren's medcouple of ``values`` (finite): the median of the kernel
    ((x_i - m) - (m - x_j)) / (x_i - x_j) over x_i >= m >= x_j, m the median, ties at the
    median by the sign rule; equal to ``statsmodels.stats.stattools.medcouple``."""
    y = np.sort(np.asarray(values, dtype=np.float64))
    n = len(y)
    middle = (y[n // 2 - 1] + y[n // 2]) / 2 if n % 2 == 0 else y[(n - 1) // 2]
    z = y - middle
    lower = np.ascontiguousarray(z[z <= 0.0])
    upper = np.ascontiguousarray(z[z >= 0.0])
    ties = int(np.count_nonzero(lower == 0.0))
    size = len(upper) * len(lower)
    k = size // 2
    if size % 2:
        return float(_select(upper, lower, ties, k))
    return float((_select(upper, lower, ties, k - 1) + _select(upper, lower, ties, k)) / 2)
