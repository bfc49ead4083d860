"""COCO's bounding-box and mask evaluation (pycocotools' ``evaluateImg`` and ``accumulate``,
``iouType`` bbox or segm), vectorised over every image at once with numpy.

Written here, not taken from pycocotools or faster-coco-eval, because sliced evaluation
accumulates the same matches over ~70 image subsets: faster-coco-eval keeps its per-image
results as opaque C++ objects and copies every one handed back to its ``accumulate`` (1.8 us
each), and evaluates in Python per (image, category) pair. On the generated 100k-image version
its evaluation took 17 s, the whole version's accumulation 5 s and 70 slices 11 s; here the
matches are arrays, so a slice is a boolean mask over them (numbers in ``benchmarks``).

The rules are pycocotools', step for step: detections ranked per image and category by score
(ties in input order), the best ``max_dets`` matched greedily per IoU threshold to the
not-yet-matched ground truth of highest IoU (crowd regions match any number of times; an
ignored ground truth only when no regular one qualifies; equal IoUs go to the later one in
pycocotools' order), ground truth outside an area range ignored, and an unmatched detection
outside it too; precision interpolated at 101 recall thresholds. pycocotools' quirk that a
match to a ground-truth id 0 counts as no match is kept. Mask IoUs are pycocotools' own
(``maskUtils.iou`` per image and category, as its ``computeIoU``); everything after them is
shared with boxes. A detection's area for area ranges is its mask's in a segm evaluation (as
``loadRes`` sets it for mask results; pycocotools keeps w * h when a result has a box too).
Tests compare every statistic with pycocotools on real detections.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from qm_dagster.geometry import pair_iou

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
ALL_AREAS = (0.0, 1e10)
# pycocotools' keypoint evaluation: its per-keypoint sigmas (COCO's 17 person keypoints), one
# maxDets, and area ranges all / medium / large
_SIGMAS = [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07]
COCO_SIGMAS = np.array([*_SIGMAS, 0.87, 0.87, 0.89, 0.89]) / 10.0
KEYPOINT_MAX_DETS = (20,)
KEYPOINT_AREAS = [(0.0, 1e10), (32.0**2, 96.0**2), (96.0**2, 1e10)]


@dataclass
class Boxes:
    """One side of an evaluation, in input order (which breaks COCO's ties): ground truth
    (``crowd``, ``area`` = COCO's ``area``) or detections (``score``, ``area`` = w * h)."""

    ids: np.ndarray
    image: np.ndarray
    category: np.ndarray
    box: np.ndarray  # n x 4, x y w h
    area: np.ndarray
    score: np.ndarray | None = None
    crowd: np.ndarray | None = None
    masks: np.ndarray | None = None  # object array of RLEs at image size (segm evaluation)
    keypoints: np.ndarray | None = None  # n x K x 3 (x, y, v), keypoints evaluation
    ignore: np.ndarray | None = None  # ground truth never counted (no visible keypoint)

    @classmethod
    def ground_truth(cls, frame: pd.DataFrame, area: np.ndarray) -> Boxes:
        return cls(
            ids=frame.annotation_id.to_numpy(np.int64),
            image=frame.image_id.to_numpy(np.int64),
            category=frame.category_id.to_numpy(np.int64),
            box=frame[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy(np.float64),
            area=np.asarray(area, np.float64),
            crowd=frame.iscrowd.to_numpy(np.int64) != 0,
        )

    @classmethod
    def detections(cls, frame: pd.DataFrame) -> Boxes:
        """One model's detections; ids are 1-based positions, as ``loadRes`` numbers them."""
        box = frame[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy(np.float64)
        return cls(
            ids=np.arange(1, len(frame) + 1, dtype=np.int64),
            image=frame.image_id.to_numpy(np.int64),
            category=frame.category_id.to_numpy(np.int64),
            box=box,
            area=box[:, 2] * box[:, 3],
            score=frame.score.to_numpy(np.float64),
        )

    @classmethod
    def from_coco(cls, anns: list[dict], detections: bool) -> Boxes:
        """From a COCO document's annotation records (tests compare with pycocotools' objects)."""
        box = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        return cls(
            ids=np.array([a["id"] for a in anns], np.int64),
            image=np.array([a["image_id"] for a in anns], np.int64),
            category=np.array([a["category_id"] for a in anns], np.int64),
            box=box,
            area=np.array([a["area"] for a in anns], np.float64),
            score=np.array([a["score"] for a in anns], np.float64) if detections else None,
            crowd=None if detections else np.array([a.get("iscrowd", 0) for a in anns]) != 0,
        )

    def take(self, rows: np.ndarray) -> Boxes:
        pick = lambda v: None if v is None else v[rows]  # noqa: E731
        return Boxes(
            self.ids[rows],
            self.image[rows],
            self.category[rows],
            self.box[rows],
            self.area[rows],
            pick(self.score),
            pick(self.crowd),
            pick(self.masks),
            pick(self.keypoints),
            pick(self.ignore),
        )

    def with_keypoints(self, keypoints: np.ndarray) -> Boxes:
        """These records with their ``n x K x 3`` keypoints, for a keypoints evaluation; ground
        truth without a labelled keypoint (v > 0) is ignored, as pycocotools' ``num_keypoints
        == 0``."""
        points = np.asarray(keypoints, np.float64).reshape(len(self.ids), -1, 3)
        ignore = None if self.score is not None else ~(points[:, :, 2] > 0).any(axis=1)
        return replace(self, keypoints=points, ignore=ignore)

    def with_masks(self, masks: list[dict]) -> Boxes:
        """These records with their RLEs, for a segm evaluation; a detection's area becomes
        its mask's."""
        rles = np.empty(len(masks), object)
        rles[:] = masks
        area = self.area if self.score is None else mask_areas(list(masks))
        return replace(self, masks=rles, area=np.asarray(area, np.float64))


@dataclass
class BoxEvaluation:
    """Matches of ``dt`` to ``gt`` for every area range and IoU threshold (``evaluate``), from
    which any subset of images accumulates (``accumulate``)."""

    gt: Boxes
    dt: Boxes
    image_ids: np.ndarray  # sorted
    category_ids: np.ndarray  # sorted
    area_ranges: list[tuple[float, float]]
    iou_type: str = "bbox"  # "segm": both sides carry masks; "keypoints": both carry keypoints
    iou_thrs: np.ndarray = field(default_factory=lambda: IOU_THRS.copy())
    max_dets: tuple[int, ...] = MAX_DETS
    eval: dict | None = field(default=None, init=False)  # the whole accumulation, once made

    def __post_init__(self) -> None:
        self.image_ids = np.unique(self.image_ids)
        self.category_ids = np.unique(self.category_ids)
        self.gt = self.gt.take(self._kept(self.gt))
        dt = self.dt.take(self._kept(self.dt))
        rank = _rank(dt)
        self.dt = dt.take(rank < self.max_dets[-1])  # beyond maxDets: never evaluated
        self.rank = rank[rank < self.max_dets[-1]]
        self.dt_image_pos = np.searchsorted(self.image_ids, self.dt.image)
        self.gt_image_pos = np.searchsorted(self.image_ids, self.gt.image)
        # the order accumulate sorts detections in: score, then image, then rank in the image
        self.order = np.lexsort((self.rank, self.dt_image_pos, -self.dt.score))
        self.pairs = _pairs(self.dt, self.gt, self.iou_type)
        self.matches = [self._match(lo, hi) for lo, hi in self.area_ranges]
        # per category: its detections in accumulate's order, its ground truth
        dt_cat = np.searchsorted(self.category_ids, self.dt.category)[self.order]
        by_cat = np.argsort(dt_cat, kind="stable")
        cuts = np.searchsorted(dt_cat[by_cat], np.arange(len(self.category_ids) + 1))
        self.cat_dts = [self.order[by_cat[a:b]] for a, b in itertools.pairwise(cuts)]
        gt_cat = np.searchsorted(self.category_ids, self.gt.category)
        self.cat_gts = [np.flatnonzero(gt_cat == k) for k in range(len(self.category_ids))]

    def _kept(self, boxes: Boxes) -> np.ndarray:
        """pycocotools' ``getAnnIds(imgIds, catIds)``: records of the evaluated images and
        categories only."""
        return np.isin(boxes.image, self.image_ids) & np.isin(boxes.category, self.category_ids)

    def _match(self, lo: float, hi: float) -> _Matches:
        """``evaluateImg`` of every (image, category) for one area range, all thresholds."""
        gt, dt = self.gt, self.dt
        gt_ignored = gt.crowd | (gt.area < lo) | (gt.area > hi)
        if gt.ignore is not None:
            gt_ignored = gt_ignored | gt.ignore
        d, g, iou = self.pairs
        # pycocotools visits each group's ground truth regular first, then ignored, each in
        # input order; the position in that visit breaks ties between equal IoUs (later wins)
        visit = np.lexsort((np.arange(len(gt.ids)), gt_ignored))
        position = np.empty(len(gt.ids), np.int64)
        position[visit] = np.arange(len(gt.ids))
        n_t = len(self.iou_thrs)
        taken = np.zeros((n_t, len(gt.ids)), bool)
        matched = np.full((n_t, len(dt.ids)), -1, np.int64)
        threshold = np.minimum(self.iou_thrs, 1 - 1e-10)
        by_rank = np.argsort(self.rank[d], kind="stable")
        starts = np.searchsorted(self.rank[d][by_rank], np.arange(self.max_dets[-1] + 1))
        for r in range(self.max_dets[-1]):
            rows = by_rank[starts[r] : starts[r + 1]]
            if not rows.size:
                break
            t = np.repeat(np.arange(n_t), rows.size)
            pd_, pg, piou = (np.tile(a[rows], n_t) for a in (d, g, iou))
            ok = (~taken[t, pg] | gt.crowd[pg]) & (piou >= threshold[t])
            t, pd_, pg, piou = t[ok], pd_[ok], pg[ok], piou[ok]
            # per (threshold, detection): regular before ignored, then highest IoU, then the
            # later in the visit
            best = np.lexsort((-position[pg], -piou, gt_ignored[pg], pd_, t))
            key = t[best] * len(dt.ids) + pd_[best]
            first = best[np.r_[True, key[1:] != key[:-1]]] if best.size else best
            matched[t[first], pd_[first]] = pg[first]
            taken[t[first], pg[first]] = True
        hit = matched >= 0
        gt_id = np.where(hit, gt.ids[np.maximum(matched, 0)], 0)
        ignored = hit & gt_ignored[np.maximum(matched, 0)]
        counted = gt_id != 0  # pycocotools: a match to ground-truth id 0 counts as none
        outside = (dt.area < lo) | (dt.area > hi)
        ignored |= ~counted & outside[None, :]
        return _Matches(counted & ~ignored, ~counted & ~ignored, ~gt_ignored, matched[0])

    def accumulate(
        self,
        image_positions: np.ndarray | None = None,
        ranges: int | None = None,
        summary: bool = False,
    ) -> dict:
        """pycocotools' ``accumulate`` over the images at ``image_positions`` (indices into
        ``image_ids``; all by default): precision ``T x R x K x A x M`` and recall
        ``T x K x A x M``, -1 where a category has no regular ground truth. ``ranges``: the
        first area ranges only (all by default). ``summary``: precision at the largest maxDets
        only (what COCO's 12 statistics read; below it, a recall is a count, not a curve)."""
        inside = np.ones(len(self.image_ids), bool)
        if image_positions is not None:
            inside[:] = False
            inside[np.asarray(image_positions, np.int64)] = True
        areas = range(len(self.area_ranges) if ranges is None else ranges)
        max_dets = self.max_dets
        n_t, n_r, n_k = len(self.iou_thrs), len(REC_THRS), len(self.category_ids)
        precision = -np.ones((n_t, n_r, n_k, len(areas), len(max_dets)))
        recall = -np.ones((n_t, n_k, len(areas), len(max_dets)))
        for k in range(n_k):
            chosen = self.cat_dts[k][inside[self.dt_image_pos[self.cat_dts[k]]]]
            chosen_rank = self.rank[chosen]
            gts = self.cat_gts[k][inside[self.gt_image_pos[self.cat_gts[k]]]]
            for a in areas:
                m_a = self.matches[a]
                npig = int(np.count_nonzero(m_a.gt_regular[gts]))
                if npig == 0:
                    continue
                for m, max_det in enumerate(max_dets):
                    rows = chosen[chosen_rank < max_det]
                    if summary and m < len(max_dets) - 1:
                        recall[:, k, a, m] = _recall(m_a.tp[:, rows], npig)
                        continue
                    precision[:, :, k, a, m], recall[:, k, a, m] = _curve(
                        m_a.tp[:, rows], m_a.fp[:, rows], npig
                    )
        params = SimpleNamespace(
            iouThrs=self.iou_thrs,
            recThrs=REC_THRS,
            maxDets=list(max_dets),
            catIds=self.category_ids,
        )
        return {"precision": precision, "recall": recall, "params": params}

    def matched_gt(self) -> np.ndarray:
        """Per evaluated detection (``dt``): the index into ``gt`` of its match at the first
        threshold and area range, or -1."""
        return self.matches[0].matched


@dataclass
class _Matches:
    tp: np.ndarray  # T x detections: counted true positive
    fp: np.ndarray  # T x detections: counted false positive
    gt_regular: np.ndarray  # ground truth not ignored in this area range
    matched: np.ndarray  # per detection, at the first threshold: matched ground truth or -1


def _rank(dt: Boxes) -> np.ndarray:
    """Each detection's place in its image and category, by score (ties in input order)."""
    order = np.lexsort((np.arange(len(dt.ids)), -dt.score, dt.category, dt.image))
    group = np.stack([dt.image[order], dt.category[order]], axis=1)
    new = np.r_[True, (group[1:] != group[:-1]).any(axis=1)] if len(order) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - start
    return rank


def _pairs(
    dt: Boxes, gt: Boxes, iou_type: str = "bbox"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, ground truth) of one image and category, with pycocotools' box or
    mask IoU (over the detection's area for a crowd region), or keypoint similarity."""
    left = pd.DataFrame({"image": dt.image, "category": dt.category, "d": np.arange(len(dt.ids))})
    right = pd.DataFrame({"image": gt.image, "category": gt.category, "g": np.arange(len(gt.ids))})
    joined = left.merge(right, on=["image", "category"])
    d, g = joined.d.to_numpy(np.int64), joined.g.to_numpy(np.int64)
    if iou_type == "segm":
        return d, g, _mask_iou(dt, gt, d, g)
    if iou_type == "keypoints":
        return d, g, _oks(dt, gt, d, g)
    return d, g, pair_iou(dt.box[d], gt.box[g], gt.crowd[g])


def _oks(dt: Boxes, gt: Boxes, d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """pycocotools' ``computeOks`` for each pair: the mean over the ground truth's labelled
    keypoints of exp(-d^2 / (2 area (2 sigma)^2)); without a labelled keypoint, distances to
    the box enlarged by its size on each side."""
    truth, found = gt.keypoints[g], dt.keypoints[d]
    if truth.shape[1] != len(COCO_SIGMAS):
        raise ValueError(
            f"keypoint similarity needs COCO's {len(COCO_SIGMAS)} person keypoints per object, "
            f"got {truth.shape[1]}"
        )
    variances = (COCO_SIGMAS * 2) ** 2
    xg, yg, labelled = truth[:, :, 0], truth[:, :, 1], truth[:, :, 2] > 0
    xd, yd = found[:, :, 0], found[:, :, 1]
    box = gt.box[g]
    x0, x1 = (box[:, 0] - box[:, 2])[:, None], (box[:, 0] + box[:, 2] * 2)[:, None]
    y0, y1 = (box[:, 1] - box[:, 3])[:, None], (box[:, 1] + box[:, 3] * 2)[:, None]
    any_labelled = labelled.any(axis=1)[:, None]
    dx = np.where(any_labelled, xd - xg, np.maximum(0, x0 - xd) + np.maximum(0, xd - x1))
    dy = np.where(any_labelled, yd - yg, np.maximum(0, y0 - yd) + np.maximum(0, yd - y1))
    e = (dx**2 + dy**2) / variances / (gt.area[g][:, None] + np.spacing(1)) / 2
    counted = np.where(any_labelled, labelled, True)
    return np.where(counted, np.exp(-e), 0.0).sum(axis=1) / counted.sum(axis=1)


def mask_areas(rles: list[dict]) -> np.ndarray:
    """``maskUtils.area`` of each RLE, 255 per call: pycocotools' ``area`` of a longer list
    overflows (it counts the list in a uint8)."""
    parts = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def _mask_iou(dt: Boxes, gt: Boxes, d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``maskUtils.iou`` of each pair, one call per (image, category) as ``computeIoU``."""
    iou = np.zeros(len(d))
    if not len(d):
        return iou
    group = pd.factorize(pd.MultiIndex.from_arrays([dt.image[d], dt.category[d]]))[0]
    by_group = np.argsort(group, kind="stable")
    cuts = np.searchsorted(group[by_group], np.arange(group.max() + 2))
    for a, b in itertools.pairwise(cuts):
        rows = by_group[a:b]
        ds, gs = np.unique(d[rows]), np.unique(g[rows])
        crowd = gt.crowd[gs].astype(np.uint8)
        matrix = np.asarray(mask_utils.iou(list(dt.masks[ds]), list(gt.masks[gs]), list(crowd)))
        iou[rows] = matrix[np.searchsorted(ds, d[rows]), np.searchsorted(gs, g[rows])]
    return iou


def _recall(tp: np.ndarray, npig: int) -> np.ndarray:
    """``_curve``'s final recall alone: the true positives over the regular ground truth (0
    without detections, as pycocotools)."""
    return np.count_nonzero(tp, axis=1) / npig


def _curve(tp: np.ndarray, fp: np.ndarray, npig: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at ``REC_THRS`` and final recall per threshold, from the
    detections' TP/FP flags in accumulate's order (pycocotools' arithmetic)."""
    tp_sum = np.cumsum(tp, axis=1).astype(float)
    fp_sum = np.cumsum(fp, axis=1).astype(float)
    n_t, nd = tp.shape
    if not nd:
        return np.zeros((n_t, len(REC_THRS))), np.zeros(n_t)
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    q = np.zeros((n_t, len(REC_THRS)))
    for t in range(n_t):
        inds = np.searchsorted(rc[t], REC_THRS, side="left")
        valid = inds < nd
        q[t, valid] = pr[t, inds[valid]]
    return q, rc[:, -1]
