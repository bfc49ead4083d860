"""COCO matching of predictions to ground truth (``boxeval``: pycocotools' greedy matching,
crowd and ignore rules, vectorised; the tests keep pycocotools as the reference). One
evaluation per model at IoU 0.5, area "all", maxDets 100 gives each prediction its status; that
table (``model/matching``) is computed once per version and read by model metrics, sliced
evaluation and label errors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qm_dagster.boxeval import ALL_AREAS, Boxes, BoxEvaluation
from qm_dagster.errors import QmError
from qm_dagster.geometry import pair_iou
from qm_dagster.metrics.label import object_area
from qm_dagster.metrics.tables import Tables

STATUSES = ("tp", "fp", "ignored", "not_evaluated")
COLUMNS = ["model", "prediction_id", "image_id", "score", "status", "gt_id", "iou"]
MAX_DETS = 100
IOU = 0.5


def match(
    gt: Boxes, image_ids: np.ndarray, category_ids: np.ndarray, predictions: pd.DataFrame
) -> pd.DataFrame:
    """Per prediction of one model (in ``predictions`` order): ``status`` (tp / fp / ignored,
    the last for a match to a crowd region, or not_evaluated beyond maxDets of its image and
    class), the matched ground truth ``gt_id`` and the ``iou`` of that match."""
    ev = BoxEvaluation(
        gt,
        Boxes.detections(predictions),
        image_ids,
        category_ids,
        [ALL_AREAS],
        iou_thrs=np.array([IOU]),
        max_dets=(MAX_DETS,),
    )
    n = len(predictions)
    gt_id, iou = np.full(n, np.nan), np.full(n, np.nan)
    evaluated = np.zeros(n, bool)
    at = ev.dt.ids - 1  # 1-based positions in ``predictions``
    evaluated[at] = True
    found = ev.matched_gt()
    hit = found >= 0
    gt_id[at[hit]] = ev.gt.ids[found[hit]]
    iou[at[hit]] = pair_iou(ev.dt.box[hit], ev.gt.box[found[hit]], ev.gt.crowd[found[hit]])
    matched = ~np.isnan(gt_id)
    status = np.where(matched, "tp", "fp").astype(object)
    crowd = np.zeros(n, bool)
    crowd[at[hit]] = ev.gt.crowd[found[hit]]
    status[matched & crowd] = "ignored"
    status[~evaluated] = "not_evaluated"
    return pd.DataFrame(
        {
            "prediction_id": predictions.prediction_id.to_numpy(),
            "image_id": predictions.image_id.to_numpy(),
            "score": predictions.score.to_numpy(float),
            "status": status,
            "gt_id": gt_id,
            "iou": iou,
        }
    )


def ground_truth(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    categories: pd.DataFrame,
    predictions: pd.DataFrame,
) -> tuple[Boxes, np.ndarray, np.ndarray]:
    """The version's ground truth with object_area as COCO's ``area`` (so size buckets use the
    same numbers as the tables), its image ids, and every category that the labels or any
    model uses."""
    areas = object_area(Tables(images, annotations))
    cats = np.array(sorted(set(categories.category_id) | set(predictions.category_id)))
    return Boxes.ground_truth(annotations, areas), images.image_id.to_numpy(np.int64), cats


def object_rles(images: pd.DataFrame, frame: pd.DataFrame) -> list[dict]:
    """Each row's RLE at its image's size (its mask, else its box), as pycocotools' ``annToRLE``
    makes them for a segm evaluation; ``frame`` is annotations or predictions."""
    rles = Tables(images, frame).rles
    unknown = [i for i, r in enumerate(rles) if r is None]
    if unknown:
        image = frame.image_id.iloc[unknown[0]]
        raise QmError(f"image {image}: size unknown (no header, no width/height in annotations)")
    return rles


def matching(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    categories: pd.DataFrame,
    predictions: pd.DataFrame,
) -> pd.DataFrame:
    """The matching table of every model (``COLUMNS``), one row per prediction."""
    labelled = pd.api.types.is_integer_dtype(images.image_id)  # COCO ids are integers
    if predictions.empty or annotations.empty or not labelled:
        return _unmatched(predictions)
    gt, image_ids, category_ids = ground_truth(images, annotations, categories, predictions)
    frames = []
    for model, preds in predictions.groupby("model", sort=True):
        frame = match(gt, image_ids, category_ids, preds.reset_index(drop=True))
        frame.insert(0, "model", model)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def _unmatched(predictions: pd.DataFrame) -> pd.DataFrame:
    """Without ground truth no prediction has a match (status ``no_ground_truth``)."""
    frame = predictions.reindex(columns=COLUMNS[:4]).reset_index(drop=True)
    return frame.assign(
        score=frame.score.astype(float), status="no_ground_truth", gt_id=np.nan, iou=np.nan
    )


def gt_found(matches: pd.DataFrame, annotations: pd.DataFrame) -> np.ndarray:
    """Per ground truth (in ``annotations`` order): whether a prediction matched it."""
    hit = matches.gt_id[matches.status == "tp"].dropna().astype(np.int64).unique()
    return np.isin(annotations.annotation_id.astype(np.int64).to_numpy(), hit)
