"""Drift tests: each one a small function plus its descriptor, registered by name.

A test compares one metric's values (``numeric``) or the objects' classes (``categorical``) in a
version with its reference, and returns its statistic and, for a hypothesis test, a p-value.
The descriptor says what the test applies to, whether the p-value (drift below the threshold)
or the statistic (drift at or above it) decides, and its default thresholds. ``qm.yaml``'s
``drift_tests`` picks a test, and optionally a threshold, per metric; every metric's default is
``auto``, the size-aware choice:

- fewer than ``LARGE`` (1000) images on the smaller side: the hypothesis test (``ks`` for a
  metric, ``chi2`` for class shares), with the image as the resampling unit;
- from ``LARGE`` images: the effect size (``psi`` for a metric, ``class_js`` for class shares),
  because with a million rows every wobble is significant.

Adding a test: write ``fn(comparison) -> (statistic, p_value)`` and ``register`` a descriptor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from qm_dagster.drift.resampling import Null, chi2_test, ks_test
from qm_dagster.errors import QmError

LARGE = 1000  # images on the smaller side from which effect sizes decide (auto)
BINS = 10
EPS = 1e-4  # floor of a bin share in PSI, so an empty bin does not make it infinite
KINDS = ("numeric", "categorical")
AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class Comparison:
    """One metric (or the classes) of both sides.

    ``reference``/``current``: every finite value; ``pooled``/``units``: the values of the rows
    the permutation uses (at most ``MAX_UNITS`` images a side, reference rows first) and the
    pooled image of each; ``rows_are_units``: each row is its own image (image level)."""

    reference: np.ndarray
    current: np.ndarray
    pooled: np.ndarray
    units: np.ndarray
    null: Null
    rows_are_units: bool = False


@dataclass(frozen=True)
class DriftTest:
    """What the drift asset needs to know about one test."""

    name: str
    kind: str
    fn: Callable[[Comparison], tuple[float, float]]
    decides: str  # "p_value": drift below threshold | "statistic": drift at or above it
    threshold: float
    warning: float  # the warning threshold, on the same side
    description: str

    def verdict(self, statistic: float, p_value: float, threshold: float | None = None) -> str:
        """``drift``, ``warning`` or ``ok``; a configured ``threshold`` moves the warning
        threshold with it (same ratio)."""
        drift = self.threshold if threshold is None else threshold
        warning = self.warning * drift / self.threshold
        if self.decides == "p_value":
            return "drift" if p_value < drift else "warning" if p_value < warning else "ok"
        return "drift" if statistic >= drift else "warning" if statistic >= warning else "ok"


_TESTS: dict[str, DriftTest] = {}


def register(test: DriftTest) -> DriftTest:
    if test.kind not in KINDS or test.decides not in ("p_value", "statistic"):
        raise QmError(f"drift test {test.name!r}: kind {test.kind!r} / decides {test.decides!r}")
    if test.name in _TESTS or test.name in (AUTO, NONE):
        raise QmError(f"drift test {test.name!r} is defined twice")
    _TESTS[test.name] = test
    return test


def get(name: str) -> DriftTest:
    """The registered test ``name``."""
    if name not in _TESTS:
        raise QmError(f"no drift test {name!r}; registered: {', '.join(names())}")
    return _TESTS[name]


def names(kind: str | None = None) -> list[str]:
    """Registered test names (of one kind), plus ``auto`` and ``none``."""
    return [*sorted(n for n, t in _TESTS.items() if kind in (None, t.kind)), AUTO, NONE]


def resolve(name: str, kind: str, images: int) -> DriftTest:
    """The test ``name`` stands for: ``auto`` by the smaller side's image count."""
    if name == AUTO:
        large = images >= LARGE
        name = {"numeric": ("ks", "psi"), "categorical": ("chi2", "class_js")}[kind][large]
    test = get(name)
    if test.kind != kind:
        raise QmError(f"drift test {name!r} is for {test.kind} data, not {kind}")
    return test


def quantile_bins(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin edges at the reference's quantiles (duplicates merged), open at both ends."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.concatenate([[-np.inf], edges, [np.inf]])


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    return counts / max(counts.sum(), 1)


def psi_value(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index on the reference's quantile bins."""
    edges = quantile_bins(reference)
    p = np.maximum(shares(reference, edges), EPS)
    q = np.maximum(shares(current, edges), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def js_value(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) of the shares in the reference's quantile bins."""
    edges = quantile_bins(reference)
    return float(jensenshannon(shares(reference, edges), shares(current, edges), base=2))


def wasserstein_std(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein distance divided by the reference's standard deviation."""
    w = stats.wasserstein_distance(reference, current)
    std = float(np.std(reference))
    return w / std if std > 0 else (0.0 if w == 0 else float("inf"))


def class_shares(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each side's share of every class present on either side (same class order)."""
    classes, codes = np.unique(np.concatenate([reference, current]), return_inverse=True)
    ref = np.bincount(codes[: len(reference)], minlength=len(classes))
    cur = np.bincount(codes[len(reference) :], minlength=len(classes))
    return ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)


def _ks(c: Comparison) -> tuple[float, float]:
    """KS statistic on every row; p-value from KS's own distribution when the rows are the
    images, else from the image permutation."""
    full = stats.ks_2samp(c.reference, c.current)
    if c.rows_are_units:
        return float(full.statistic), float(full.pvalue)
    return float(full.statistic), ks_test(c.pooled, c.units, c.null)[1]


def _chi2(c: Comparison) -> tuple[float, float]:
    """Pearson chi-square of the class counts; p-value from the image permutation."""
    return chi2_test(c.pooled, c.units, c.null)


def _effect(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[..., tuple[float, float]]:
    return lambda c: (fn(c.reference, c.current), float("nan"))


def _class_js(c: Comparison) -> tuple[float, float]:
    return float(jensenshannon(*class_shares(c.reference, c.current), base=2)), float("nan")


register(
    DriftTest(
        "ks",
        "numeric",
        _ks,
        "p_value",
        0.01,
        0.05,
        "Kolmogorov-Smirnov: statistic on every row; p-value by permuting whole images between "
        "the versions (the rows of one image are not independent)",
    )
)
register(
    DriftTest(
        "psi",
        "numeric",
        _effect(psi_value),
        "statistic",
        0.25,
        0.1,
        "Population stability index on 10 reference-quantile bins (0.1 moderate, 0.25 major)",
    )
)
register(
    DriftTest(
        "wasserstein",
        "numeric",
        _effect(wasserstein_std),
        "statistic",
        0.5,
        0.2,
        "Wasserstein distance in units of the reference's standard deviation",
    )
)
register(
    DriftTest(
        "js",
        "numeric",
        _effect(js_value),
        "statistic",
        0.2,
        0.1,
        "Jensen-Shannon distance (base 2) on 10 reference-quantile bins",
    )
)
register(
    DriftTest(
        "chi2",
        "categorical",
        _chi2,
        "p_value",
        0.01,
        0.05,
        "Chi-square of the class counts; p-value by permuting whole images between the versions",
    )
)
register(
    DriftTest(
        "class_js",
        "categorical",
        _class_js,
        "statistic",
        0.2,
        0.1,
        "Jensen-Shannon distance (base 2) of the class shares",
    )
)
