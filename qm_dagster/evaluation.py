"""Model evaluation as a function of a metric, with COCO's bbox evaluation (``boxeval``: equal
to pycocotools' on ../shared/data; tests keep pycocotools as the reference).

Whole version: one ``evaluate()`` per model, its matches kept. Image slices: COCO's
``accumulate`` over the matches of the slice's images only, equal to a fresh evaluation of the
subset. Size buckets of object_area:
extra ``areaRng`` entries of the same evaluation (bounds inclusive, as COCO's). Plus PASCAL VOC
AP (all-point and 11-point).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from qm_dagster.boxeval import KEYPOINT_AREAS, KEYPOINT_MAX_DETS, Boxes, BoxEvaluation

STATS = [
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
]
COCO_AREAS = [[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]]
_STAT_SPECS = [  # (precision or recall, IoU threshold or None for all, area index, maxDets)
    ("precision", None, 0, 100),
    ("precision", 0.5, 0, 100),
    ("precision", 0.75, 0, 100),
    ("precision", None, 1, 100),
    ("precision", None, 2, 100),
    ("precision", None, 3, 100),
    ("recall", None, 0, 1),
    ("recall", None, 0, 10),
    ("recall", None, 0, 100),
    ("recall", None, 1, 100),
    ("recall", None, 2, 100),
    ("recall", None, 3, 100),
]

# pycocotools' summarizeKps: maxDets 20, area ranges all / medium / large (indices 0, 1, 2)
KEYPOINT_STATS = [
    "AP",
    "AP50",
    "AP75",
    "AP_medium",
    "AP_large",
    "AR",
    "AR50",
    "AR75",
    "AR_medium",
    "AR_large",
]
_KEYPOINT_SPECS = [
    (kind, iou, area, 20)
    for kind in ("precision", "recall")
    for iou, area in ((None, 0), (0.5, 0), (0.75, 0), (None, 1), (None, 2))
]
# A row of any evaluation: COCO's 12 box / mask statistics, then the keypoint statistics that
# are not among them (recall at maxDets 20, and at OKS 0.5 and 0.75); -1 where an evaluation
# does not define one (a keypoint row has no AP_small or AR1, a box row no AR20)
KEYPOINT_ONLY = ["AR20", "AR50", "AR75"]
ROW_STATS = [*STATS, *KEYPOINT_ONLY]
_KEYPOINT_COLUMNS = {"AR": "AR20"}  # keypoint statistic -> its row column where renamed


def evaluate(
    gt: Boxes,
    dt: Boxes,
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    size_edges: list[float] | None = None,
    iou_type: str = "bbox",
) -> BoxEvaluation:
    """COCO's default evaluation (``iou_type`` bbox, or segm when both sides carry masks) of
    one model, not yet accumulated; ``size_edges`` add the buckets [edges[i], edges[i+1]] of
    COCO's ``area`` after its four area ranges."""
    extra = [(float(lo), float(hi)) for lo, hi in itertools.pairwise(size_edges or [])]
    ids, cats = np.asarray(image_ids), np.asarray(category_ids)
    if iou_type == "keypoints":
        return BoxEvaluation(
            gt, dt, ids, cats, KEYPOINT_AREAS + extra, "keypoints", max_dets=KEYPOINT_MAX_DETS
        )
    ranges = [tuple(r) for r in COCO_AREAS] + extra
    return BoxEvaluation(gt, dt, ids, cats, ranges, iou_type=iou_type)


def _mean(values: np.ndarray) -> float:
    """COCO's summary of a precision or recall slice: mean over entries > -1, else -1."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def stats(result: dict, params, area: int = 0) -> dict[str, float]:
    """The 12 numbers of ``COCOeval.summarize`` from an accumulated ``result``; ``area`` shifts
    the "all" range to another index (a size bucket), whose small/medium/large are then -1."""
    return _summarized(result, params, area, STATS, _STAT_SPECS)


def keypoint_stats(result: dict, area: int = 0) -> dict[str, float]:
    """The 10 numbers of ``COCOeval.summarize`` for keypoints from an accumulated ``result``."""
    return _summarized(result, result["params"], area, KEYPOINT_STATS, _KEYPOINT_SPECS)


def _summarized(result: dict, params, area: int, names, specs) -> dict[str, float]:
    out = {}
    for name, (kind, iou, a, max_dets) in zip(names, specs, strict=True):
        values = result[kind]
        index = a or area
        if (a and area) or index >= values.shape[-2] or max_dets not in params.maxDets:
            out[name] = -1.0  # not in this evaluation (a subset has area "all", maxDets 100)
            continue
        values = values[..., index, list(params.maxDets).index(max_dets)]
        if iou is not None:
            values = values[np.isclose(params.iouThrs, iou)]
        out[name] = _mean(values)
    return out


def summary(result: dict, iou_type: str, area: int = 0) -> dict[str, float]:
    """Every ``ROW_STATS`` column of an accumulated ``result`` of an ``iou_type`` evaluation:
    COCO's summary for that type, -1 in the columns it does not define."""
    row = dict.fromkeys(ROW_STATS, -1.0)
    if iou_type != "keypoints":
        return row | stats(result, result["params"], area)
    found = keypoint_stats(result, area)
    return row | {_KEYPOINT_COLUMNS.get(k, k): v for k, v in found.items()}


def whole(ev: BoxEvaluation) -> dict[str, float]:
    """COCO's statistics of the whole evaluation (``summary``)."""
    return summary(_accumulated(ev), ev.iou_type)


def _accumulated(ev: BoxEvaluation) -> dict:
    """The whole version's accumulation, made once and kept on ``ev``."""
    if ev.eval is None:
        ev.eval = ev.accumulate()
    return ev.eval


def size_bucket(ev: BoxEvaluation, area: int) -> dict[str, float]:
    """COCO's statistics of area range ``area`` (of the whole accumulation): AP, AP50, AP75,
    AR1, AR10, AR100; the small/medium/large ones are -1 (not defined inside one range)."""
    return summary(_accumulated(ev), ev.iou_type, area=area)


def image_subset(ev: BoxEvaluation, positions: np.ndarray) -> dict:
    """Accumulated precision and recall of the images at ``positions`` of ``ev.image_ids``
    (COCO's four area ranges, precision at maxDets 100), equal to a fresh evaluation of those
    images: a mask over the one evaluation's matches."""
    coco = len(KEYPOINT_AREAS) if ev.iou_type == "keypoints" else len(COCO_AREAS)
    return ev.accumulate(positions, ranges=coco, summary=True)


def image_slice(ev: BoxEvaluation, img_ids: list[int]) -> dict[str, float]:
    """COCO's 12 statistics of the images ``img_ids`` from one evaluation."""
    ids = ev.image_ids
    wanted = np.intersect1d(np.asarray(img_ids, dtype=ids.dtype), ids)
    if not wanted.size:
        return dict.fromkeys(STATS, -1.0)
    result = image_subset(ev, np.searchsorted(ids, wanted))
    return stats(result, result["params"])


def with_scores(row: dict[str, float], c: dict[str, int]) -> dict[str, float]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else np.nan
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else np.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else np.nan
    return {**row, **c, "precision": precision, "recall": recall, "f1": f1}


@dataclass
class VocBox:
    image: object
    category: object
    box: tuple[float, float, float, float]  # x, y, w, h
    score: float = 1.0
    difficult: bool = False


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def voc_ap(
    gts: list[VocBox], dets: list[VocBox], iou: float = 0.5, interpolation: str = "all"
) -> dict[object, float]:
    """PASCAL VOC AP per class: detections by descending score, each matched to the best
    unmatched ground truth with IoU >= ``iou`` (``difficult`` ones neither count nor penalise);
    ``interpolation`` "all" (VOC2010+ all-point) or "11" (VOC2007 11-point). pycocotools has no
    VOC mode, so this is written here; tests check it against the published toy-example values."""
    out = {}
    for cat in sorted({g.category for g in gts}, key=str):
        truth = [g for g in gts if g.category == cat]
        n_pos = sum(not g.difficult for g in truth)
        used: set[int] = set()
        tp, fp = [], []
        for d in sorted((d for d in dets if d.category == cat), key=lambda d: -d.score):
            cands = [(i, _iou(d.box, g.box)) for i, g in enumerate(truth) if g.image == d.image]
            best, best_iou = max(cands, key=lambda c: c[1], default=(None, 0.0))
            if best is not None and best_iou >= iou:
                if truth[best].difficult:
                    continue
                if best not in used:
                    used.add(best)
                    tp.append(1)
                    fp.append(0)
                    continue
            tp.append(0)
            fp.append(1)
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / n_pos if n_pos else np.zeros(len(tp))
        precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
        out[cat] = _interpolated(recall, precision, interpolation)
    return out


def _interpolated(recall: np.ndarray, precision: np.ndarray, interpolation: str) -> float:
    if interpolation == "11":
        return float(
            np.mean(
                [
                    precision[recall >= r].max() if (recall >= r).any() else 0.0
                    for r in np.linspace(0, 1, 11)
                ]
            )
        )
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
