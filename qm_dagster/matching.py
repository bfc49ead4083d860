"""COCO matching of predictions to ground truth, done by pycocotools' own COCOeval.

One ``evaluate()`` at IoU 0.5, area "all", maxDets 100 gives each prediction COCO's greedy
match (crowd and ignore rules included) and each ground truth whether it was found.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STATUSES = ("tp", "fp", "ignored", "not_evaluated")


def coco_gt(
    images: pd.DataFrame, annotations: pd.DataFrame, areas: np.ndarray, categories: list[int]
) -> COCO:
    """An in-memory pycocotools COCO object of the version's ground truth."""
    dataset = {
        "images": [{"id": _id(i)} for i in images.image_id],
        "categories": [{"id": int(c)} for c in categories],
        "annotations": [
            {
                "id": int(a.annotation_id),
                "image_id": _id(a.image_id),
                "category_id": int(a.category_id),
                "bbox": [a.bbox_x, a.bbox_y, a.bbox_w, a.bbox_h],
                "area": float(area),
                "iscrowd": int(a.iscrowd),
                **({"segmentation": json.loads(a.segmentation)} if a.segmentation else {}),
            }
            for a, area in zip(annotations.itertuples(), areas, strict=True)
        ],
    }
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _id(value: object) -> int:
    return int(value)  # COCO ids are integers; unlabeled versions never reach matching


def coco_dt(gt: COCO, predictions: pd.DataFrame) -> COCO:
    """pycocotools results of one model; ids are 1-based positions, as ``loadRes`` numbers them."""
    results = [
        {
            "image_id": _id(p.image_id),
            "category_id": int(p.category_id),
            "bbox": [p.bbox_x, p.bbox_y, p.bbox_w, p.bbox_h],
            "score": float(p.score),
        }
        for p in predictions.itertuples()
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes(results) if results else _empty_results(gt)


def _empty_results(gt: COCO) -> COCO:
    dt = COCO()
    dt.dataset = {
        "images": gt.dataset["images"],
        "categories": gt.dataset["categories"],
        "annotations": [],
    }
    dt.createIndex()
    return dt


def evaluate_at(gt: COCO, dt: COCO, iou: float = 0.5, max_dets: int = 100) -> COCOeval:
    """COCOeval (bbox) restricted to one IoU threshold and the "all" area range."""
    ev = COCOeval(gt, dt, "bbox")
    ev.params.iouThrs = np.array([iou])
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [max_dets]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    return ev


def match(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    areas: np.ndarray,
    categories: list[int],
    predictions: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per prediction (in ``predictions`` order): ``status`` (tp / fp / ignored / not_evaluated,
    the last for results beyond maxDets of their image and class) and ``gt_id``; per ground truth
    (in ``annotations`` order): ``found`` (matched) and ``gt_ignored`` (crowd)."""
    gt = coco_gt(images, annotations, areas, categories)
    dt = coco_dt(gt, predictions)
    ev = evaluate_at(gt, dt)
    status = np.full(len(predictions), "not_evaluated", dtype=object)
    gt_id = np.full(len(predictions), np.nan)
    found: dict[int, bool] = {}
    ignored: dict[int, bool] = {}
    for e in ev.evalImgs:
        if e is None:
            continue
        for d, m, ig in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], strict=True):
            status[d - 1] = "ignored" if ig else ("tp" if m > 0 else "fp")
            gt_id[d - 1] = m if m > 0 else np.nan
        for g, m, ig in zip(e["gtIds"], e["gtMatches"][0], e["gtIgnore"], strict=True):
            found[g] = bool(m > 0)
            ignored[g] = bool(ig)
    pred = pd.DataFrame({"status": status, "gt_id": gt_id}, index=predictions.index)
    ids = annotations.annotation_id.astype(int)
    truth = pd.DataFrame(
        {
            "found": ids.map(found).fillna(False).astype(bool).to_numpy(),
            "gt_ignored": ids.map(ignored).fillna(False).astype(bool).to_numpy(),
        },
        index=annotations.index,
    )
    return pred, truth
