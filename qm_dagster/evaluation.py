"""Model evaluation as a function of a metric, with pycocotools' own COCOeval.

Whole version: one ``evaluate()``. Image slices: the same evaluation, its per-image results
re-indexed to the slice's images, then ``accumulate()`` on that subset only — equal to a fresh
evaluation of the subset (pycocotools' ``accumulate(p)`` with a subset of ``imgIds`` indexes the
results by position in the subset, a trap this avoids). Object slices: COCO's own mechanism — the
metric's value where COCO reads ``area`` (ground truth and predictions) and the buckets as
``areaRng`` (bounds inclusive, as COCO's). Plus PASCAL VOC AP (all-point and 11-point).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SUMMARY = ["AP", "AP50", "AP75", "AR100"]


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def evaluate(gt: COCO, dt: COCO, iou_type: str = "bbox") -> COCOeval:
    """A default COCOeval, evaluated (not yet accumulated)."""
    ev = COCOeval(gt, dt, iou_type)
    quiet(ev.evaluate)
    return ev


def summarize(ev: COCOeval, area: int = 0, max_dets: int = 100) -> dict[str, float]:
    """AP, AP50, AP75 and AR@max_dets of an accumulated evaluation, computed exactly as
    ``COCOeval.summarize`` does (mean over the entries > -1, else -1)."""
    p = ev.params
    m = list(p.maxDets).index(max_dets)

    def mean(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    precision = ev.eval["precision"][:, :, :, area, m]
    recall = ev.eval["recall"][:, :, area, m]
    t50 = np.where(np.isclose(p.iouThrs, 0.5))[0]
    t75 = np.where(np.isclose(p.iouThrs, 0.75))[0]
    return {
        "AP": mean(precision),
        "AP50": mean(precision[t50]),
        "AP75": mean(precision[t75]),
        "AR100": mean(recall),
    }


def whole(ev: COCOeval) -> dict[str, float]:
    """Summary of the whole evaluation (``accumulate`` on all images)."""
    quiet(ev.accumulate)
    return summarize(ev)


def image_subset(ev: COCOeval, img_ids: list[int]) -> COCOeval:
    """An accumulated evaluation of ``img_ids`` only (area "all", maxDets 100), reusing ``ev``'s
    per-image matching: accumulating only what the summary reads is measured several times
    faster than all areas and maxDets, with identical precision and recall for those."""
    p = ev._paramsEval
    index = {i: n for n, i in enumerate(p.imgIds)}
    subset = [i for i in img_ids if i in index]
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    a_all = 0  # COCO's first area range is "all"
    sub = copy.copy(ev)
    sub.params = copy.deepcopy(ev.params)
    sub._paramsEval = copy.deepcopy(p)
    for params in (sub.params, sub._paramsEval):
        params.imgIds = subset
        params.areaRng = [p.areaRng[a_all]]
        params.areaRngLbl = [p.areaRngLbl[a_all]]
        params.maxDets = [p.maxDets[-1]]
    cats = p.catIds if p.useCats else [-1]
    sub.evalImgs = [
        ev.evalImgs[k * n_area * n_img + a_all * n_img + index[i]]
        for k in range(len(cats))
        for i in subset
    ]
    quiet(sub.accumulate)
    return sub


def image_slice(ev: COCOeval, img_ids: list[int]) -> dict[str, float]:
    return summarize(image_subset(ev, img_ids)) if img_ids else dict.fromkeys(SUMMARY, -1.0)


def counts(ev: COCOeval, score: float = 0.5, iou: float = 0.5) -> dict[str, int]:
    """TP / FP / FN at IoU ``iou`` for predictions scoring at least ``score`` (area all, maxDets
    100, crowd and ignored regions excluded), from an evaluation's per-image matches."""
    t = int(np.argmin(np.abs(ev.params.iouThrs - iou)))
    tp = fp = n_gt = 0
    a_all = [list(r) for r in ev.params.areaRng].index(list(ev.params.areaRng[0]))
    for e in ev.evalImgs:
        if e is None or list(e["aRng"]) != list(ev.params.areaRng[a_all]):
            continue
        keep = np.asarray(e["dtScores"]) >= score
        matched = np.asarray(e["dtMatches"][t]) > 0
        ignored = np.asarray(e["dtIgnore"][t]).astype(bool)
        tp += int((keep & matched & ~ignored).sum())
        fp += int((keep & ~matched & ~ignored).sum())
        n_gt += int((~np.asarray(e["gtIgnore"]).astype(bool)).sum())
    return {"tp": tp, "fp": fp, "fn": n_gt - tp}


def with_scores(row: dict[str, float], c: dict[str, int]) -> dict[str, float]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else np.nan
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else np.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else np.nan
    return {**row, **c, "precision": precision, "recall": recall, "f1": f1}


def area_buckets(
    gt: COCO, dt: COCO, gt_values: dict[int, float], dt_values: dict[int, float], edges: list[float]
) -> list[dict[str, float]]:
    """One summary per bucket [edges[i], edges[i+1]] of an object-level metric: the values take
    the place of COCO's ``area`` for ground truth and predictions, the buckets of ``areaRng``."""
    gt, dt = copy.deepcopy(gt), copy.deepcopy(dt)
    for ann_id, ann in gt.anns.items():
        ann["area"] = gt_values.get(ann_id, np.nan)
    for ann_id, ann in dt.anns.items():
        ann["area"] = dt_values.get(ann_id, np.nan)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.areaRng = [[float(edges[0]), float(edges[-1])]] + [
        [float(lo), float(hi)] for lo, hi in itertools.pairwise(edges)
    ]
    ev.params.areaRngLbl = ["all"] + [f"b{i}" for i in range(len(edges) - 1)]
    quiet(ev.evaluate)
    quiet(ev.accumulate)
    return [summarize(ev, area=a + 1) for a in range(len(edges) - 1)]


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
