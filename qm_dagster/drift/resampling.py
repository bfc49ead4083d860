"""Permutation tests with the image as the resampling unit.

Objects and predictions come in clusters per image (one photo of twenty bananas), so treating
them as independent rows overstates significance many times. Under "no drift" the images of the
two versions are exchangeable: the null distribution of a statistic comes from reassigning whole
images (with all their rows) between reference and current, keeping each side's image count.

The resamples are drawn exactly as ``scipy.stats.permutation_test(permutation_type=
"independent")`` draws them (``rng.permutation`` of the pooled units per resample, or every
split when there are no more of them than resamples), with its p-value rule, so a test can
check a p-value against scipy with the same statistic, unit and seed. The null is evaluated
here for a whole batch of resamples at once and shared by every metric of a level (the
assignment of images does not depend on the metric); scipy calls the statistic once per
resample.

A side with more than ``max_units`` images is subsampled (fixed seed) for the p-value: the
power of a two-sample test is bounded by its smaller side, and it keeps the cost at
resamples x rows of at most ``max_units`` images a side.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

RESAMPLES = 999
MAX_UNITS = 5000
_BATCH_CELLS = 4_000_000  # resamples x rows evaluated at once (bounds the null's memory)


@dataclass(frozen=True)
class Units:
    """The rows of both sides mapped to pooled resampling units (reference units first)."""

    n_reference: int  # units (images) of the reference used by the permutation
    n_current: int
    images_reference: int  # all images of the reference (before subsampling)
    images_current: int
    reference_rows: np.ndarray  # the unit of each reference row (kept rows only)
    current_rows: np.ndarray
    reference_keep: np.ndarray  # indices of the reference rows used (after subsampling units)
    current_keep: np.ndarray

    @property
    def n(self) -> int:
        return self.n_reference + self.n_current

    @property
    def rows(self) -> np.ndarray:
        """The unit of every pooled row: reference rows, then current rows."""
        return np.concatenate([self.reference_rows, self.current_rows])


def _codes(images: np.ndarray, max_units: int, rng: np.random.Generator):
    """Unit code per kept row, the kept row indices, the units kept and all units."""
    unique, inverse = np.unique(images, return_inverse=True)
    if len(unique) <= max_units:
        return inverse, np.arange(len(images)), len(unique), len(unique)
    chosen = np.sort(rng.choice(len(unique), max_units, replace=False))
    recode = np.full(len(unique), -1)
    recode[chosen] = np.arange(max_units)
    codes = recode[inverse]
    keep = np.flatnonzero(codes >= 0)
    return codes[keep], keep, max_units, len(unique)


def units(
    reference_images: np.ndarray,
    current_images: np.ndarray,
    max_units: int = MAX_UNITS,
    seed: int = 0,
) -> Units:
    """Pool the images of both sides (ids may repeat across versions: they are kept apart)."""
    rng = np.random.default_rng([seed, 1])
    ref_codes, ref_keep, n_ref, all_ref = _codes(np.asarray(reference_images), max_units, rng)
    cur_codes, cur_keep, n_cur, all_cur = _codes(np.asarray(current_images), max_units, rng)
    return Units(n_ref, n_cur, all_ref, all_cur, ref_codes, cur_codes + n_ref, ref_keep, cur_keep)


@dataclass(frozen=True)
class Null:
    """Which units the reference gets in each resample, drawn as scipy draws them."""

    n_reference: int
    n: int
    resamples: int = RESAMPLES
    seed: int = 0

    @property
    def exact(self) -> bool:
        """Every split is enumerated when there are no more splits than resamples."""
        return math.comb(self.n, self.n_reference) <= self.resamples

    @property
    def size(self) -> int:
        return math.comb(self.n, self.n_reference) if self.exact else self.resamples

    def batches(self, rows_per_resample: int) -> Iterator[np.ndarray]:
        """Boolean ``(resamples, n)`` blocks: unit ``u`` is in the reference in resample ``r``."""
        batch = max(1, _BATCH_CELLS // max(rows_per_resample, 1))
        if self.exact:
            splits = itertools.combinations(range(self.n), self.n_reference)
        else:
            rng = np.random.default_rng(self.seed)
            splits = (rng.permutation(self.n)[: self.n_reference] for _ in range(self.resamples))
        while chunk := list(itertools.islice(splits, batch)):
            masks = np.zeros((len(chunk), self.n), dtype=bool)
            masks[np.arange(len(chunk))[:, None], np.asarray(chunk, dtype=np.int64)] = True
            yield masks

    def p_value(self, observed: float, null: np.ndarray) -> float:
        """scipy's rule for ``alternative="greater"``: the share of the null at or above the
        observed statistic (with its relative tolerance), plus one for a random null."""
        gamma = abs(np.finfo(np.float64).eps * 100 * observed)
        hits = int(np.count_nonzero(null >= observed - gamma))
        adjustment = 0 if self.exact else 1
        return (hits + adjustment) / (self.size + adjustment)


def ks_statistic(sorted_in_reference: np.ndarray, tie_ends: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic for each row of ``sorted_in_reference`` (``(resamples, rows)``:
    whether each pooled row, in value order, is on the reference side), evaluated where the
    value changes (``tie_ends``), as ``scipy.stats.ks_2samp`` does. A resample that leaves a
    side without rows gets 1 (counted as at least as extreme as anything observed)."""
    in_ref = np.cumsum(sorted_in_reference, axis=1, dtype=np.int64)
    n_ref = in_ref[:, -1:]
    n_cur = sorted_in_reference.shape[1] - n_ref
    seen = tie_ends + 1
    in_ref = in_ref[:, tie_ends]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = in_ref / n_ref - (seen - in_ref) / n_cur
        stat = np.maximum(diff.max(axis=1), np.clip(-diff.min(axis=1), 0, 1))
    empty = (n_ref[:, 0] == 0) | (n_cur[:, 0] == 0)
    stat[empty] = 1.0
    return stat


def chi2_statistic(reference_counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Pearson chi-square (no continuity correction) of the 2 x K table per resample:
    ``reference_counts`` ``(resamples, K)``, ``totals`` the pooled count per class. A resample
    with an empty side gets infinity."""
    current_counts = totals - reference_counts
    n = totals.sum()
    ref_n = reference_counts.sum(axis=1, keepdims=True)
    expected_ref = ref_n * totals / n
    expected_cur = (n - ref_n) * totals / n
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = ((reference_counts - expected_ref) ** 2 / expected_ref).sum(axis=1) + (
            (current_counts - expected_cur) ** 2 / expected_cur
        ).sum(axis=1)
    stat[(ref_n[:, 0] == 0) | (ref_n[:, 0] == n)] = np.inf
    return stat


def ks_test(values: np.ndarray, pooled_units: np.ndarray, null: Null) -> tuple[float, float]:
    """KS statistic of the observed split (the first ``null.n_reference`` units are the
    reference) and its image-permutation p-value. ``values``: every pooled row's value
    (finite), ``pooled_units``: its unit."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    tie_ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])
    sorted_units = pooled_units[order]
    observed = float(ks_statistic((sorted_units < null.n_reference)[None, :], tie_ends)[0])
    null_stats = [
        ks_statistic(masks[:, sorted_units], tie_ends) for masks in null.batches(len(values))
    ]
    return observed, null.p_value(observed, np.concatenate(null_stats))


def chi2_test(classes: np.ndarray, pooled_units: np.ndarray, null: Null) -> tuple[float, float]:
    """Chi-square statistic of the class counts of the observed split and its
    image-permutation p-value; ``classes``: the class code of every pooled row."""
    _, codes = np.unique(classes, return_inverse=True)
    per_unit = np.zeros((null.n, codes.max() + 1))
    np.add.at(per_unit, (pooled_units, codes), 1)
    totals = per_unit.sum(axis=0)
    observed_split = (np.arange(null.n) < null.n_reference)[None, :]
    observed = float(chi2_statistic(observed_split @ per_unit, totals)[0])
    null_stats = [chi2_statistic(masks @ per_unit, totals) for masks in null.batches(null.n)]
    return observed, null.p_value(observed, np.concatenate(null_stats))
