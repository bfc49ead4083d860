"""Outliers per metric (Tukey fences) and per level (IsolationForest over all metrics).

Fences use numpy's percentiles (linear interpolation): moderate outside Q1/Q3 -/+ 1.5 IQR, severe
outside -/+ 3 IQR. A degenerate distribution (IQR = 0) flags every value that differs from the
bulk (the median) as moderate. Object metrics are fenced per class as well as overall.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

MODERATE, SEVERE = 1.5, 3.0
COLUMNS = [
    "level",
    "metric",
    "scope",
    "key",
    "image_id",
    "value",
    "q1",
    "q3",
    "lower",
    "upper",
    "severity",
]


def fences(values: np.ndarray) -> dict[str, float]:
    """Q1, Q3 and the moderate and severe fences of the finite ``values``."""
    finite = values[np.isfinite(values)]
    q1, q3 = (float(v) for v in np.percentile(finite, [25, 75]))
    iqr = q3 - q1
    return {
        "q1": q1,
        "q3": q3,
        "median": float(np.median(finite)),
        "moderate_low": q1 - MODERATE * iqr,
        "moderate_high": q3 + MODERATE * iqr,
        "severe_low": q1 - SEVERE * iqr,
        "severe_high": q3 + SEVERE * iqr,
    }


def severities(values: np.ndarray, f: dict[str, float]) -> np.ndarray:
    """``"severe"``, ``"moderate"`` or ``""`` for each value."""
    out = np.full(len(values), "", dtype=object)
    if f["q3"] == f["q1"]:  # degenerate: anything off the bulk stands out
        out[np.isfinite(values) & (values != f["median"])] = "moderate"
        return out
    moderate = (values < f["moderate_low"]) | (values > f["moderate_high"])
    severe = (values < f["severe_low"]) | (values > f["severe_high"])
    out[moderate] = "moderate"
    out[severe] = "severe"
    return out


def metric_outliers(
    level: str, metric: str, frame: pd.DataFrame, key: str, scope: str = "all"
) -> pd.DataFrame:
    """Rows of ``frame`` (``key``, ``image_id``, ``value``) outside the fences of its values."""
    values = pd.to_numeric(frame.value, errors="coerce").to_numpy(dtype=float)
    if np.isfinite(values).sum() < 4:
        return pd.DataFrame(columns=COLUMNS)
    f = fences(values)
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
            "q1": f["q1"],
            "q3": f["q3"],
            "lower": f["moderate_low"],
            "upper": f["moderate_high"],
            "severity": sev[hit],
        },
        columns=COLUMNS,
    )


def all_outliers(metrics: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Tukey outliers of every metric table; object metrics also per class."""
    parts: list[pd.DataFrame] = []
    for name, frame in sorted(metrics.items()):
        if frame.empty or "value" not in frame:
            continue
        if "annotation_id" in frame:
            parts.append(metric_outliers("object", name, frame, "annotation_id"))
            for category, rows in frame.groupby("category"):
                parts.append(
                    metric_outliers("object", name, rows, "annotation_id", f"class:{category}")
                )
        elif "prediction_id" in frame:
            for model, rows in frame.groupby("model"):
                parts.append(
                    metric_outliers("prediction", name, rows, "prediction_id", f"model:{model}")
                )
        else:
            parts.append(metric_outliers("image", name, frame.assign(key=frame.image_id), "key"))
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def multivariate_scores(table: pd.DataFrame, columns: Iterable[str], seed: int = 0) -> pd.DataFrame:
    """IsolationForest anomaly score (higher = more unusual) of each row over ``columns``
    (standardised; missing values at the column median), and whether it is flagged."""
    cols = [c for c in columns if c in table and pd.api.types.is_numeric_dtype(table[c])]
    x = table[cols].astype(float)
    x = x.loc[:, x.notna().any()]
    if x.shape[1] == 0 or len(x) < 8:
        return pd.DataFrame(
            {"score": np.full(len(table), np.nan), "flagged": False}, index=table.index
        )
    x = x.fillna(x.median())
    std = x.std(ddof=0).replace(0, 1)
    z = ((x - x.mean()) / std).to_numpy()
    forest = IsolationForest(random_state=seed).fit(z)
    return pd.DataFrame(
        {"score": -forest.score_samples(z), "flagged": forest.predict(z) == -1}, index=table.index
    )
