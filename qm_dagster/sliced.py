"""Sliced evaluation: COCO metrics of each model per bucket of each metric."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from qm_dagster.evaluation import (
    SUMMARY,
    area_buckets,
    counts,
    evaluate,
    image_subset,
    summarize,
    whole,
    with_scores,
)
from qm_dagster.matching import coco_dt, coco_gt
from qm_dagster.metrics.label import object_area
from qm_dagster.metrics.tables import Tables

BUCKETS = 5
COCO_AREA_EDGES = [0.0, 32.0**2, 96.0**2, 1e10]
COLUMNS = [
    "model",
    "level",
    "metric",
    "bucket",
    "lo",
    "hi",
    "n_images",
    *SUMMARY,
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
]


def quantile_edges(values: np.ndarray, buckets: int = BUCKETS) -> np.ndarray:
    finite = values[np.isfinite(values)]
    return (
        np.unique(np.quantile(finite, np.linspace(0, 1, buckets + 1)))
        if finite.size
        else np.array([])
    )


def _image_buckets(values: pd.Series, edges: np.ndarray) -> list[tuple[int, float, float, list]]:
    out = []
    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = b == len(edges) - 2
        inside = (values >= lo) & ((values <= hi) if last else (values < hi))
        out.append((b, float(lo), float(hi), [int(i) for i in values.index[inside]]))
    return out


def sliced_evaluation(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    categories: pd.DataFrame,
    predictions: pd.DataFrame,
    image_table: pd.DataFrame,
    score: float = 0.5,
    named: dict[str, list] | None = None,
    edges: dict[str, list[float]] | None = None,
    buckets: int = BUCKETS,
) -> pd.DataFrame:
    """Rows per model: the whole version, each bucket of each image-level metric (``buckets``
    quantile buckets, or the explicit ``edges`` configured for that metric), each named image
    slice (``metric`` = ``slice:<name>``), and size buckets of ``object_area`` (COCO's small /
    medium / large unless ``edges`` names ``label/object_area``). Precision, recall and F1
    count detections with score >= ``score``."""
    edges = edges or {}
    if annotations.empty or predictions.empty:
        return pd.DataFrame(columns=COLUMNS)
    areas = object_area(Tables(images, annotations))
    cats = sorted(set(categories.category_id) | set(predictions.category_id))
    gt = coco_gt(images, annotations, areas, cats)
    metric_cols = [
        c for c in image_table.columns if c.startswith("data/") and "@" not in c and ":" not in c
    ]
    table = image_table.set_index("image_id")
    rows = []
    for model, preds in predictions.groupby("model", sort=True):
        dt = coco_dt(gt, preds.reset_index(drop=True))
        ev = evaluate(gt, dt)
        base = {"model": model, "n_images": len(gt.getImgIds())}
        rows.append(
            with_scores(
                {**base, "level": "image", "metric": "all", "bucket": 0, **whole(ev)},
                counts(ev, score),
            )
        )
        for col in metric_cols:
            values = pd.to_numeric(table[col], errors="coerce")
            cuts = (
                np.asarray(edges[col], float)
                if col in edges
                else quantile_edges(values.to_numpy(float), buckets)
            )
            for b, lo, hi, ids in _image_buckets(values, cuts):
                rows.append(
                    _slice_row(
                        ev, ids, score, {**base, "metric": col, "bucket": b, "lo": lo, "hi": hi}
                    )
                )
        for name, ids in (named or {}).items():
            rows.append(
                _slice_row(
                    ev,
                    [int(i) for i in ids],
                    score,
                    {**base, "metric": f"slice:{name}", "bucket": 0},
                )
            )
        gt_area = dict(zip(annotations.annotation_id.astype(int), areas, strict=True))
        dt_area = {i: a["area"] for i, a in dt.anns.items()}
        area_edges = list(edges.get("label/object_area", COCO_AREA_EDGES))
        for b, summary in enumerate(area_buckets(gt, dt, gt_area, dt_area, area_edges)):
            rows.append(
                {
                    **base,
                    "level": "object",
                    "metric": "label/object_area",
                    "bucket": b,
                    "lo": area_edges[b],
                    "hi": area_edges[b + 1],
                    **summary,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _slice_row(ev, ids: list[int], score: float, row: dict[str, object]) -> dict[str, object]:
    """Summary and counts of the images ``ids`` from the model's one evaluation."""
    sub = image_subset(ev, ids) if ids else None
    summary = dict.fromkeys(SUMMARY, -1.0) if sub is None else summarize(sub)
    found = counts(sub, score) if sub is not None else {"tp": 0, "fp": 0, "fn": 0}
    return with_scores({**row, "level": "image", "n_images": len(ids), **summary}, found)
