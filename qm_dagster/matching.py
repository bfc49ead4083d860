"""COCO matching of predictions to ground truth, by faster-coco-eval's C++ COCOeval.

faster-coco-eval implements pycocotools' evaluation (same greedy matching, crowd and ignore
rules, accumulation) in C++; on ../shared/data its statistics and matches equal pycocotools' own
(the tests keep pycocotools as the reference) and it is ~3x faster on a 10k-image version. One
evaluation per model at IoU 0.5, area "all", maxDets 100 gives each prediction its status; that
table (``model/matching``) is computed once per version and read by model metrics, sliced
evaluation and label errors.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
from faster_coco_eval import COCO, COCOeval_faster

from qm_dagster.metrics.label import object_area
from qm_dagster.metrics.tables import Tables

STATUSES = ("tp", "fp", "ignored", "not_evaluated")
COLUMNS = ["model", "prediction_id", "image_id", "score", "status", "gt_id", "iou"]
MAX_DETS = 100
IOU = 0.5
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


def _quiet(*_args) -> None:
    """faster-coco-eval's ``print_function``: progress lines are not wanted in run logs."""


def coco_gt(
    images: pd.DataFrame, annotations: pd.DataFrame, areas: np.ndarray, categories: list[int]
) -> COCO:
    """An in-memory COCO object of the version's ground truth (``areas`` where COCO reads
    ``area``: the object_area metric, so size buckets use the same numbers as the tables)."""
    boxes = annotations[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy(float).tolist()
    segmentations = annotations.segmentation.tolist()
    records = zip(
        annotations.annotation_id.astype(int).tolist(),
        annotations.image_id.astype(int).tolist(),
        annotations.category_id.astype(int).tolist(),
        boxes,
        np.asarray(areas, float).tolist(),
        annotations.iscrowd.astype(int).tolist(),
        segmentations,
        strict=True,
    )
    dataset = {
        "images": [{"id": int(i)} for i in images.image_id],
        "categories": [{"id": int(c)} for c in categories],
        "annotations": [
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": cat,
                "bbox": box,
                "area": area,
                "iscrowd": crowd,
                **({"segmentation": json.loads(seg)} if seg else {}),
            }
            for ann_id, image_id, cat, box, area, crowd, seg in records
        ],
    }
    return COCO(dataset, print_function=_quiet)


def coco_dt(gt: COCO, predictions: pd.DataFrame) -> COCO:
    """One model's results; ids are 1-based positions in ``predictions``, as ``loadRes`` numbers
    them."""
    boxes = predictions[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy(float).tolist()
    results = [
        {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}
        for image_id, cat, box, score in zip(
            predictions.image_id.astype(int).tolist(),
            predictions.category_id.astype(int).tolist(),
            boxes,
            predictions.score.astype(float).tolist(),
            strict=True,
        )
    ]
    dt = gt.loadRes(results)
    dt.print_function = _quiet
    return dt


def evaluator(gt: COCO, dt: COCO, iou_type: str = "bbox", **params: object) -> COCOeval_faster:
    """A COCOeval (faster-coco-eval) whose per-image results are kept (``separate_eval``), so
    that subsets of images can be accumulated from one evaluation; ``params`` override
    COCO's defaults (``iouThrs``, ``areaRng``, ``maxDets``, ...)."""
    ev = COCOeval_faster(gt, dt, iou_type, separate_eval=True, print_function=_quiet)
    for name, value in params.items():
        setattr(ev.params, name, value)
    if "areaRng" in params:
        ev.params.areaRngLbl = [f"r{i}" for i in range(len(ev.params.areaRng))]
    ev.evaluate()
    return ev


def match(gt: COCO, predictions: pd.DataFrame, crowd: np.ndarray) -> pd.DataFrame:
    """Per prediction of one model (in ``predictions`` order): ``status`` (tp / fp / ignored,
    the last for a match to a crowd region, or not_evaluated beyond maxDets of its image and
    class), the matched ground truth ``gt_id`` and the ``iou`` of that match; ``crowd``: the
    ids of the crowd regions."""
    dt = coco_dt(gt, predictions)
    ev = COCOeval_faster(gt, dt, "bbox", print_function=_quiet)
    ev.params.iouThrs = np.array([IOU])
    ev.params.areaRng = [[0.0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [MAX_DETS]
    ev.evaluate()  # faster-coco-eval also accumulates here, which records the matches
    n = len(predictions)
    gt_id, iou = np.full(n, np.nan), np.full(n, np.nan)
    pairs = [(int(d), int(g), v) for (d, g), v in _pairs(ev.eval.get("matched", {}))]
    if pairs:
        d, g, v = (np.array(x) for x in zip(*pairs, strict=True))
        gt_id[d - 1], iou[d - 1] = g, v
    matched = ~np.isnan(gt_id)
    status = np.where(matched, "tp", "fp").astype(object)
    status[matched & np.isin(gt_id, crowd)] = "ignored"
    status[~matched & ~_within_max_dets(predictions)] = "not_evaluated"
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


def _pairs(matched: dict[str, float]):
    """faster-coco-eval's ``matched`` keys are ``"<dt id>_<gt id>"``."""
    for key, value in matched.items():
        d, g = key.split("_", 1)
        yield (d, g), value


def _within_max_dets(predictions: pd.DataFrame) -> np.ndarray:
    """Whether each prediction is among the ``MAX_DETS`` best of its image and class, ranked as
    COCOeval ranks them (score descending, ties in input order: a stable sort)."""
    frame = pd.DataFrame(
        {
            "image_id": predictions.image_id.to_numpy(),
            "category_id": predictions.category_id.to_numpy(),
            "neg": -predictions.score.to_numpy(float),
        }
    )
    ordered = frame.sort_values(["image_id", "category_id", "neg"], kind="stable")
    rank = ordered.groupby(["image_id", "category_id"], sort=False).cumcount()
    return (rank.reindex(frame.index) < MAX_DETS).to_numpy()


def ground_truth(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    categories: pd.DataFrame,
    predictions: pd.DataFrame,
) -> COCO:
    """The version's ground truth with object_area as COCO's ``area`` and every category that
    the labels or any model uses."""
    areas = object_area(Tables(images, annotations))
    cats = sorted(set(categories.category_id) | set(predictions.category_id))
    return coco_gt(images, annotations, areas, cats)


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
    gt = ground_truth(images, annotations, categories, predictions)
    crowd = annotations.annotation_id.to_numpy()[annotations.iscrowd.to_numpy() != 0]
    frames = []
    for model, preds in predictions.groupby("model", sort=True):
        frame = match(gt, preds.reset_index(drop=True), crowd)
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
