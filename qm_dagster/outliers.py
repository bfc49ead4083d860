"""Outliers per metric (fences robust to skew) and per level (IsolationForest over all metrics).

Each metric's descriptor names its fence rule (``MetricSpec.outliers``; ``qm.yaml``
``outlier_rules`` overrides it), all on numpy's percentiles (linear interpolation):

- ``tukey``: moderate outside Q1/Q3 -/+ 1.5 IQR, severe outside -/+ 3 IQR: for symmetric metrics.
- ``adjusted`` (the default): Hubert & Vandervieren's (2008) skew-adjusted boxplot on the long
  side, Tukey's fence on the short side: with the medcouple MC (a robust skewness in [-1, 1]),
  for MC >= 0 [Q1 - k IQR, Q3 + k e^(3 MC) IQR], mirrored for MC < 0, k = 1.5 (moderate) or
  3 (severe). It equals Tukey's on symmetric data (MC = 0) and stops a skewed metric (colour
  shares, overlaps) from calling its whole long tail outliers. Their boxplot also shrinks the
  short side (e^(-4 MC)); we do not, because on small or bimodal samples that fence falls
  inside the data: on the demo's 60 train images (MC -0.31) it called 11% of brightness values
  severe. MC is computed exactly (:mod:`qm_dagster.medcouple`, equal to statsmodels' estimator)
  on at most ``MC_SAMPLE`` values, a fixed-seed sample.
- ``log``: Tukey's fences on log(value), mapped back: for positive metrics spread over orders of
  magnitude (sharpness); a value <= 0 lies below every fence.

A zero-inflated metric (at least a quarter of its values on its minimum: colour shares, IoUs with
other objects) is fenced on the values above that minimum, which itself is never flagged; on
the generated 2,200-image version, fencing ``object_green`` (66% zeros) whole called 10.5% of
objects severe. A degenerate distribution (IQR = 0) flags every value that differs from the bulk
(the median) as moderate. Object metrics are fenced per class too, for classes with at least
``MIN_CLASS_OBJECTS`` objects (fewer make noisy quartiles); prediction metrics per model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from qm_dagster.errors import MetricError
from qm_dagster.metrics.registry import get as metric_spec

MODERATE, SEVERE = 1.5, 3.0
MC_SAMPLE = 2000
MIN_CLASS_OBJECTS = 50
POINT_MASS = 0.25  # share of values on the minimum from which it is the bulk (zero-inflated)
DEFAULT_RULE = "adjusted"
COLUMNS = [
    "level",
    "metric",
    "scope",
    "key",
    "image_id",
    "value",
    "rule",
    "q1",
    "q3",
    "lower",
    "upper",
    "severity",
]


def rules(keys: Iterable[str], configured: tuple = ()) -> dict[str, str]:
    """The fence rule of each metric table: ``configured`` (qm.yaml ``outlier_rules``:
    ``(metric, rule)``) over the metric descriptor's ``outliers`` over ``DEFAULT_RULE``."""
    given = dict(configured)
    out = {}
    for key in keys:
        try:
            out[key] = given.get(key, metric_spec(key).outliers)
        except MetricError:
            out[key] = given.get(key, DEFAULT_RULE)
    return out


def sampled_medcouple(values: np.ndarray, seed: int = 0) -> float:
    """The medcouple of ``values`` (of a fixed-seed sample of ``MC_SAMPLE`` when larger)."""
    from qm_dagster.medcouple import medcouple  # numba: loaded where a fence needs it

    if len(values) > MC_SAMPLE:
        values = np.random.default_rng(seed).choice(values, MC_SAMPLE, replace=False)
    return medcouple(values)


def _skew_factors(mc: float) -> tuple[float, float]:
    """Multipliers of the IQR below Q1 and above Q3: Hubert & Vandervieren's e^(3|MC|) on the
    long side; the short side keeps Tukey's 1 (see the module docstring)."""
    stretch = float(np.exp(3 * abs(mc)))
    return (1.0, stretch) if mc >= 0 else (stretch, 1.0)


def fences(values: np.ndarray, rule: str = "tukey") -> dict[str, float]:
    """Q1, Q3, the median and the moderate and severe fences of the finite ``values`` under
    ``rule`` (``tukey``, ``adjusted`` or ``log``; all on the values' own scale). When at least
    ``POINT_MASS`` of the values sit on the smallest one (zero-inflated shares and IoUs), that
    value is the bulk (``floor``: never flagged) and the fences are those of the values above it."""
    finite = values[np.isfinite(values)]
    floor = float(finite.min()) if len(finite) else -np.inf
    above = finite[finite > floor]
    if len(finite) and len(above) >= 4 and np.mean(finite == floor) >= POINT_MASS:
        return {**_fences(above, rule), "floor": floor}
    return {**_fences(finite, rule), "floor": -np.inf}


def _fences(finite: np.ndarray, rule: str) -> dict[str, float]:
    if rule == "log":
        logs = np.log(finite[finite > 0])
        f = _fences(logs, "tukey") if len(logs) else _fences(finite, "tukey")
        if not len(logs):
            return {**f, "rule": "log"}
        return {k: (float(np.exp(v)) if k != "rule" else "log") for k, v in f.items()}
    q1, q3 = (float(v) for v in np.percentile(finite, [25, 75]))
    iqr = q3 - q1
    low, high = _skew_factors(sampled_medcouple(finite)) if rule == "adjusted" else (1.0, 1.0)
    return {
        "rule": rule,
        "q1": q1,
        "q3": q3,
        "median": float(np.median(finite)),
        "moderate_low": q1 - MODERATE * low * iqr,
        "moderate_high": q3 + MODERATE * high * iqr,
        "severe_low": q1 - SEVERE * low * iqr,
        "severe_high": q3 + SEVERE * high * iqr,
    }


def severities(values: np.ndarray, f: dict[str, float]) -> np.ndarray:
    """``"severe"``, ``"moderate"`` or ``""`` for each value."""
    out = np.full(len(values), "", dtype=object)
    if f["q3"] == f["q1"]:  # degenerate: anything off the bulk stands out
        out[np.isfinite(values) & (values != f["median"])] = "moderate"
    else:
        moderate = (values < f["moderate_low"]) | (values > f["moderate_high"])
        severe = (values < f["severe_low"]) | (values > f["severe_high"])
        out[moderate] = "moderate"
        out[severe] = "severe"
    out[values <= f["floor"]] = ""
    return out


def metric_outliers(
    level: str,
    metric: str,
    frame: pd.DataFrame,
    key: str,
    scope: str = "all",
    rule: str = DEFAULT_RULE,
) -> pd.DataFrame:
    """Rows of ``frame`` (``key``, ``image_id``, ``value``) outside the fences of its values."""
    values = pd.to_numeric(frame.value, errors="coerce").to_numpy(dtype=float)
    if np.isfinite(values).sum() < 4:
        return pd.DataFrame(columns=COLUMNS)
    f = fences(values, rule)
    sev = severities(values, f)
    hit = sev != ""
    return pd.DataFrame(
        {
            "level": level,
            "metric": metric,
            "scope": scope,
            "key": frame[key].to_numpy()[hit],
            "image_id": frame.image_id.to_numpy()[hit],
            "value": values[hit],
            "rule": rule,
            "q1": f["q1"],
            "q3": f["q3"],
            "lower": f["moderate_low"],
            "upper": f["moderate_high"],
            "severity": sev[hit],
        },
        columns=COLUMNS,
    )


def all_outliers(
    metrics: dict[str, pd.DataFrame], rules: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Outliers of every metric table under its rule (``rules`` by table key, else
    ``DEFAULT_RULE``); object metrics also per class with enough objects, prediction metrics
    per model. The (metric, scope) pairs are fenced on threads (percentiles and the compiled
    medcouple release the GIL; an asset fences ~180 pairs)."""
    rules = rules or {}
    tasks = [
        (*task, rules.get(name, DEFAULT_RULE))
        for name, frame in sorted(metrics.items())
        if not frame.empty and "value" in frame
        for task in _scopes(name, frame)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = [p for p in pool.map(lambda t: metric_outliers(*t), tasks) if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def _scopes(name: str, frame: pd.DataFrame) -> Iterator[tuple]:
    """``metric_outliers`` arguments (before the rule) of each scope of one metric table."""
    if "annotation_id" in frame:
        yield "object", name, frame, "annotation_id", "all"
        for category, rows in frame.groupby("category"):
            if len(rows) >= MIN_CLASS_OBJECTS:
                yield "object", name, rows, "annotation_id", f"class:{category}"
    elif "prediction_id" in frame:
        for model, rows in frame.groupby("model"):
            yield "prediction", name, rows, "prediction_id", f"model:{model}"
    else:
        yield "image", name, frame.assign(key=frame.image_id), "key", "all"


def _on_rule_scale(x: pd.DataFrame, scales: Mapping[str, str]) -> pd.DataFrame:
    """Columns whose rule is ``log`` on the log scale (a value <= 0 one e-fold below the
    smallest positive one), so a long tail of sizes does not pass for unusual rows."""
    x = x.copy()
    for column in x.columns:
        if scales.get(column) == "log":
            values = x[column].to_numpy(dtype=float)
            positive = values[values > 0]
            floor = np.log(positive.min()) - 1 if len(positive) else 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                x[column] = np.where(
                    values > 0, np.log(values), np.where(np.isnan(values), np.nan, floor)
                )
    return x


def multivariate_scores(
    table: pd.DataFrame,
    columns: Iterable[str],
    scales: Mapping[str, str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """IsolationForest anomaly score (higher = more unusual) of each row over ``columns``
    (each on its outlier rule's scale, ``scales``; standardised; missing values at the column
    median), and its severity: ``moderate`` / ``severe`` above Tukey's upper fences of the
    scores themselves. (The forest's own cut, contamination "auto", flagged 9-18% of the
    images of every dataset in ../shared/data.)"""
    cols = [c for c in columns if c in table and pd.api.types.is_numeric_dtype(table[c])]
    x = _on_rule_scale(table[cols].astype(float), scales or {})
    x = x.loc[:, x.notna().any()]
    if x.shape[1] == 0 or len(x) < 8:
        return pd.DataFrame(
            {"score": np.full(len(table), np.nan), "severity": "", "flagged": False},
            index=table.index,
        )
    x = x.fillna(x.median())
    std = x.std(ddof=0).replace(0, 1)
    z = ((x - x.mean()) / std).to_numpy()
    from sklearn.ensemble import IsolationForest  # lazy: 0.26 s that most importers never use

    score = -IsolationForest(random_state=seed).fit(z).score_samples(z)
    f = fences(score, "tukey")
    severity = np.where(
        score > f["severe_high"], "severe", np.where(score > f["moderate_high"], "moderate", "")
    )
    return pd.DataFrame(
        {"score": score, "severity": severity, "flagged": severity != ""}, index=table.index
    )


def outlier_shares(frame: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Per level, the share of its rows with an outlier of any metric (numeric metadata: the
    Plots tab draws it across versions)."""
    out = {}
    for level, table in tables.items():
        rows = frame[frame.level == level]
        out[f"outlier share {level}"] = rows.key.nunique() / len(table) if len(table) else 0.0
    return out
