"""Drift of a version against its reference: per metric and level, on class shares, and
multivariate.

Each metric gets the drift test chosen for it (``qm.yaml`` ``drift_tests``, else its metric
descriptor's ``drift``, else ``auto``: see :mod:`qm_dagster.drift.stattests`), and every row
also carries the descriptive statistics (Wasserstein/std, PSI, JS, means) whatever decided.
The sampling unit is the image at every level: object and prediction metrics (and class
shares) get their p-values by permuting whole images (:mod:`qm_dagster.drift.resampling`), and
``auto``'s size rule counts images, not rows. Prediction metrics are compared per model
present in both versions (``model/iou@detector``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qm_dagster.drift import stattests
from qm_dagster.drift.multivariate import domain_classifier
from qm_dagster.drift.resampling import RESAMPLES, Null, Units, units
from qm_dagster.drift.stattests import AUTO, LARGE, NONE, Comparison
from qm_dagster.errors import MetricError
from qm_dagster.metrics.registry import get as metric_spec
from qm_dagster.quality_table import CLASS_COLUMN, PREDICTED

__all__ = [
    "COLUMNS",
    "LARGE",
    "Choice",
    "choices",
    "domain_classifier",
    "level_drift",
    "stattests",
]

# ``statistic`` is what ``test`` computes (KS statistic, PSI, chi-square, ROC AUC ...);
# ``threshold`` the one that applied to the p-value or the statistic (``stattests``).
COLUMNS = [
    "level",
    "metric",
    "test",
    "n_reference",
    "n_current",
    "images_reference",
    "images_current",
    "statistic",
    "p_value",
    "threshold",
    "wasserstein_std",
    "psi",
    "js",
    "effect",
    "reference_mean",
    "current_mean",
    "verdict",
]
CLASS_SHARES = "class_shares"


@dataclass(frozen=True)
class Choice:
    """The drift test of one metric, and its threshold (None: the test's default)."""

    test: str = AUTO
    threshold: float | None = None


def _default_test(column: str) -> str:
    """The metric descriptor's drift test (``auto`` for tables that are no registered metric)."""
    try:
        return metric_spec(column).drift
    except MetricError:
        return AUTO


def choices(columns: Iterable[str], configured: tuple = ()) -> dict[str, Choice]:
    """The test of each column and of class shares: ``configured`` (qm.yaml ``drift_tests``:
    ``(metric, test, threshold)``) over the metric descriptor's ``drift`` over ``auto``."""
    given = {metric: Choice(test, threshold) for metric, test, threshold in configured}
    return {c: given.get(c, Choice(_default_test(c))) for c in [*columns, CLASS_SHARES]}


def _test_row(
    test: stattests.DriftTest, comparison: Comparison, threshold: float | None
) -> dict[str, object]:
    statistic, p_value = test.fn(comparison)
    return {
        "test": test.name,
        "statistic": statistic,
        "p_value": p_value,
        "threshold": test.threshold if threshold is None else threshold,
        "verdict": test.verdict(statistic, p_value, threshold),
    }


def _comparison(
    reference: np.ndarray, current: np.ndarray, pooled: Units, null: Null, valid
) -> Comparison:
    """The comparison of one column: ``valid`` picks the rows with a usable value."""
    ref_ok, cur_ok = valid(reference), valid(current)
    kept = np.concatenate([reference[pooled.reference_keep], current[pooled.current_keep]])
    kept_ok = np.concatenate([ref_ok[pooled.reference_keep], cur_ok[pooled.current_keep]])
    return Comparison(
        reference=reference[ref_ok],
        current=current[cur_ok],
        pooled=kept[kept_ok],
        units=pooled.rows[kept_ok],
        null=null,
        rows_are_units=len(pooled.rows) == pooled.n,
    )


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(float)


def metric_row(
    metric: str, comparison: Comparison, images: int, choice: Choice
) -> dict[str, object]:
    """One numeric metric: the chosen test's verdict and the descriptive statistics."""
    ref, cur = comparison.reference, comparison.current
    row: dict[str, object] = {"metric": metric, "n_reference": len(ref), "n_current": len(cur)}
    if len(ref) < 2 or len(cur) < 2:
        return {**row, "test": choice.test, "verdict": "insufficient data"}
    test = stattests.resolve(choice.test, "numeric", images)
    return {
        **row,
        **_test_row(test, comparison, choice.threshold),
        "wasserstein_std": stattests.wasserstein_std(ref, cur),
        "psi": stattests.psi_value(ref, cur),
        "js": stattests.js_value(ref, cur),
        "reference_mean": float(ref.mean()),
        "current_mean": float(cur.mean()),
    }


def class_row(
    comparison: Comparison, images: int, choice: Choice, name: str = CLASS_SHARES
) -> dict[str, object]:
    """Class shares (of the objects, or of a classification version's labels or predicted
    classes): the chosen categorical test and the JS distance."""
    ref, cur = comparison.reference, comparison.current
    row: dict[str, object] = {
        "metric": name,
        "n_reference": len(ref),
        "n_current": len(cur),
    }
    if len(np.unique(np.concatenate([ref, cur]))) < 2 or not len(ref) or not len(cur):
        return {**row, "test": choice.test, "verdict": "insufficient data"}
    test = stattests.resolve(choice.test, "categorical", images)
    js = stattests.get("class_js").fn(comparison)[0]
    return {**row, **_test_row(test, comparison, choice.threshold), "js": js}


def level_drift(
    level: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    choices: Mapping[str, Choice] | None = None,
    classes: str | None = None,
    suffix: str = "",
    resamples: int = RESAMPLES,
    seed: int = 0,
    class_metric: str = CLASS_SHARES,
) -> pd.DataFrame:
    """One row per numeric column present in both tables (``choices`` by column; ``none``
    skips one), plus class shares of the ``classes`` column (row ``class_metric``); the image
    (``image_id``) is the sampling unit. ``suffix`` is appended to metric names (``@model``)."""
    choices = choices or {}
    pooled = units(reference.image_id.to_numpy(), current.image_id.to_numpy(), seed=seed)
    null = Null(pooled.n_reference, pooled.n, resamples=resamples, seed=seed)
    images = min(pooled.images_reference, pooled.images_current)
    rows = []
    for column in columns:
        choice = choices.get(column, Choice())
        if column not in reference or column not in current or choice.test == NONE:
            continue
        comparison = _comparison(
            _numeric(reference, column), _numeric(current, column), pooled, null, np.isfinite
        )
        rows.append(metric_row(column + suffix, comparison, images, choice))
    if classes and classes in reference and classes in current:
        choice = choices.get(CLASS_SHARES, Choice())
        if choice.test != NONE:
            comparison = _comparison(
                reference[classes].astype(str).to_numpy(),
                current[classes].astype(str).to_numpy(),
                pooled,
                null,
                lambda v: np.ones(len(v), dtype=bool),
            )
            rows.append(class_row(comparison, images, choice, class_metric))
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "level"])
    frame.insert(0, "level", level)
    frame["images_reference"] = pooled.images_reference
    frame["images_current"] = pooled.images_current
    return frame[COLUMNS]


def _class_columns(current: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """A classification version's label column and each model's predicted class, where both
    versions have them."""
    names = [c for c in current.columns if c == CLASS_COLUMN or c.startswith(f"{PREDICTED}@")]
    return [c for c in names if c in reference.columns]


def _metric_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    """The level's own metric columns (no per-image aggregates ``:mean``, no ``@model``)."""
    return [c for c in table.columns if c.startswith(prefix) and ":" not in c and "@" not in c]


def version_drift(
    reference: Mapping[str, pd.DataFrame],
    current: Mapping[str, pd.DataFrame],
    configured: tuple = (),
    seed: int = 0,
) -> pd.DataFrame:
    """Every drift row of a version against its reference, from both sides' quality tables
    (``image``, ``object``, ``prediction``): image metrics and the domain classifier, object
    metrics and class shares, prediction metrics per model present in both versions."""
    parts = []
    images, ref_images = current["image"], reference["image"]
    image_cols = _metric_columns(images, "data/")
    picked = choices(image_cols, configured)
    parts.append(level_drift("image", ref_images, images, image_cols, picked, seed=seed))
    classifier = domain_classifier(ref_images, images, image_cols, seed=seed)
    parts.append(pd.DataFrame([{"level": "image", **classifier}]))
    for column in _class_columns(images, ref_images):
        name = (
            CLASS_SHARES
            if column == CLASS_COLUMN
            else f"predicted_{CLASS_SHARES}@" + (column.split("@", 1)[1])
        )
        parts.append(
            level_drift(
                "image", ref_images, images, [], picked, column, seed=seed, class_metric=name
            )
        )
    objects, ref_objects = current["object"], reference["object"]
    object_cols = _metric_columns(objects, "label/")
    picked = choices(object_cols, configured)
    parts.append(
        level_drift("object", ref_objects, objects, object_cols, picked, "category", seed=seed)
    )
    predictions, ref_predictions = current.get("prediction"), reference.get("prediction")
    if predictions is not None and ref_predictions is not None and "model" in predictions:
        columns = _metric_columns(predictions, "model/")
        picked = choices(columns, configured)
        for model in sorted(set(predictions.model) & set(ref_predictions.model)):
            parts.append(
                level_drift(
                    "prediction",
                    ref_predictions[ref_predictions.model == model],
                    predictions[predictions.model == model],
                    columns,
                    picked,
                    suffix=f"@{model}",
                    seed=seed,
                )
            )
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True)[COLUMNS] if parts else pd.DataFrame(columns=COLUMNS)


def drift_shares(frame: pd.DataFrame) -> dict[str, float]:
    """Per level, the share of its tested metrics that drifted (numeric metadata)."""
    return {
        f"drift share {level}": float((rows.verdict == "drift").mean())
        for level, rows in frame.groupby("level")
    }
