"""Metrics read from the version's tables (no pixels): label and sequence metrics, object counts,
and model metrics per model after one COCO matching each."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from qm_dagster.matching import gt_found
from qm_dagster.metrics.registry import MetricSpec
from qm_dagster.metrics.tables import Tables

MATCH_COLUMNS = ["status", "gt_id"]


def _frame(spec: MetricSpec, t: Tables, values: np.ndarray) -> pd.DataFrame:
    if spec.index == "image":
        return pd.DataFrame({"image_id": t.images.image_id.to_numpy(), "value": values})
    if spec.index == "object":
        a = t.annotations
        return pd.DataFrame(
            {
                "annotation_id": a.annotation_id.to_numpy(),
                "image_id": a.image_id.to_numpy(),
                "category": a.category.to_numpy(),
                "value": values,
            }
        )
    p = t.predictions
    return pd.DataFrame(
        {
            "prediction_id": p.prediction_id.to_numpy(),
            "image_id": p.image_id.to_numpy(),
            "category": p.category.to_numpy(),
            "value": values,
        }
    )


def _evaluate(spec: MetricSpec, t: Tables) -> np.ndarray:
    if spec.reads == "table":
        values = np.asarray(spec.fn(t), dtype=float)
    else:  # custom prediction metric: one call per row with the prediction and its match
        rows = t.predictions.to_dict(orient="records")
        values = np.array([_safe(spec, r) for r in rows], dtype=float)
    expected = len({"image": t.images, "object": t.annotations}.get(spec.index, t.predictions))
    if values.shape != (expected,):
        raise ValueError(
            f"metric {spec.asset_key} returned {values.shape} values for {expected} rows"
        )
    return values


def _safe(spec: MetricSpec, row: dict) -> float:
    matched = {k: row.get(k) for k in MATCH_COLUMNS}
    prediction = {k: v for k, v in row.items() if k not in MATCH_COLUMNS}
    try:
        value = float(spec.fn(prediction, matched))
    except Exception:
        return math.nan
    return value if math.isfinite(value) else math.nan


def table_metrics(
    specs: Sequence[MetricSpec], images: pd.DataFrame, annotations: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """``{asset key: table}`` for image- and object-level table metrics."""
    t = Tables(images, annotations)
    return {s.asset_key: _frame(s, t, _evaluate(s, t)) for s in specs}


def matched_tables(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    predictions: pd.DataFrame,
    matches: pd.DataFrame,
) -> Tables:
    """One model's predictions with their COCO match (its rows of ``model/matching``, in the
    same order), as metrics see them."""
    t = Tables(images, annotations, predictions.reset_index(drop=True))
    t.predictions = t.predictions.assign(
        status=matches.status.to_numpy(), gt_id=matches.gt_id.to_numpy()
    )
    crowd = annotations.iscrowd.to_numpy() != 0 if len(annotations) else np.zeros(0, bool)
    t.extra.update(gt_found=gt_found(matches, annotations), gt_ignored=crowd)
    return t


def model_metrics(
    specs: Sequence[MetricSpec],
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    predictions: pd.DataFrame,
    matches: pd.DataFrame,
) -> dict[str, pd.DataFrame]:
    """``{asset key: table}`` of prediction-level metrics for every model (``model`` column),
    each model's predictions read with their rows of the matching table."""
    out: dict[str, list[pd.DataFrame]] = {s.asset_key: [] for s in specs}
    by_model = matches.groupby("model", sort=True)
    for model, preds in predictions.groupby("model", sort=True):
        matched = by_model.get_group(model)
        if not np.array_equal(matched.prediction_id.to_numpy(), preds.prediction_id.to_numpy()):
            raise ValueError(f"model/matching is stale for model {model!r}: re-materialize it")
        t = matched_tables(images, annotations, preds, matched)
        for s in specs:
            frame = _frame(s, t, _evaluate(s, t))
            frame.insert(0, "model", model)
            out[s.asset_key].append(frame)
    return {
        k: pd.concat(v, ignore_index=True) if v else pd.DataFrame(columns=["model", "value"])
        for k, v in out.items()
    }
