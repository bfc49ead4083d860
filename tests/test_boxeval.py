"""boxeval (our vectorised COCO bbox evaluation) against pycocotools on generated edge cases:
crowd regions, tied scores, duplicated objects (tied IoUs), more than maxDets detections of one image and class, ground truth
outside area ranges, a ground-truth id 0, images without detections or labels. Every entry of
pycocotools' precision and recall arrays must be equal, for the whole set and for subsets."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from qm_dagster.boxeval import Boxes, BoxEvaluation

AREAS = [(0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10)]


def _dataset(seed: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 200, "height": 200} for i in range(1, 31)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5)]
    anns, dets = [], []
    next_id = 0 if seed % 2 else 1  # odd seeds hold a ground-truth id 0 (pycocotools' quirk)
    for img in images[:-3]:  # the last three images have no labels
        for _ in range(rng.integers(0, 8)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(3, 60, 2)
            crowd = int(rng.random() < 0.1)
            anns.append(
                {
                    "id": next_id,
                    "image_id": img["id"],
                    "category_id": int(rng.choice([1, 2, 5])),
                    "bbox": [x, y, w, h],
                    "area": float(w * h * rng.uniform(0.5, 1.0)),
                    "iscrowd": crowd,
                }
            )
            next_id += 1
    for a in anns[::6]:  # exact copies: equal IoUs, which pycocotools gives the later one
        anns.append({**a, "id": next_id})
        next_id += 1
    for a in anns:  # detections near the objects, some of another class, scores with ties
        for _ in range(rng.integers(0, 3)):
            x, y, w, h = np.asarray(a["bbox"]) + rng.normal(0, 4, 4)
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"] if rng.random() < 0.8 else 2,
                    "bbox": [float(x), float(y), float(max(w, 1)), float(max(h, 1))],
                    "score": round(float(rng.random()), 1),
                }
            )
    for img in images[1:-1]:  # stray detections, one image and class far beyond maxDets
        for _ in range(130 if img["id"] == 5 else rng.integers(0, 4)):
            x, y = rng.uniform(0, 180, 2)
            dets.append(
                {
                    "image_id": img["id"],
                    "category_id": 1 if img["id"] == 5 else int(rng.choice([1, 2, 5])),
                    "bbox": [float(x), float(y), float(rng.uniform(2, 40)), 10.0],
                    "score": round(float(rng.random()), 2),
                }
            )
    return {"images": images, "categories": cats, "annotations": anns}, dets


def _coco(seed: int) -> tuple[COCO, COCO]:
    """pycocotools' objects of the generated ground truth and detections."""
    doc, dets = _dataset(seed)
    gt = COCO()
    gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        return gt, gt.loadRes(dets)


def _ours(gt: COCO, dt: COCO, areas, **params) -> BoxEvaluation:
    return BoxEvaluation(
        Boxes.from_coco(gt.dataset["annotations"], detections=False),
        Boxes.from_coco(dt.dataset["annotations"], detections=True),
        np.array(gt.getImgIds()),
        np.array(gt.getCatIds()),
        areas,
        **params,
    )


def _pycocotools(gt: COCO, dt: COCO, image_ids=None) -> dict:
    ev = COCOeval(gt, dt, "bbox")
    ev.params.areaRng = [list(r) for r in AREAS]
    if image_ids is not None:
        ev.params.imgIds = list(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev.eval


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_precision_and_recall_arrays_equal_pycocotools(seed):
    gt, dt = _coco(seed)
    ours = _ours(gt, dt, AREAS)
    reference = _pycocotools(gt, dt)
    result = ours.accumulate()
    np.testing.assert_allclose(result["precision"], reference["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["recall"], reference["recall"], rtol=0, atol=1e-12)
    assert (reference["precision"] > 0).any() and (reference["precision"] == -1).any()

    rng = np.random.default_rng(seed)
    ids = np.array(sorted(gt.getImgIds()))
    for _ in range(5):
        subset = np.sort(rng.choice(len(ids), int(rng.integers(1, len(ids))), replace=False))
        fresh = _pycocotools(gt, dt, ids[subset])
        whole = ours.accumulate(subset)
        for key in ("precision", "recall"):
            np.testing.assert_allclose(whole[key], fresh[key], rtol=0, atol=1e-12)
        # the summary form: the first area ranges, precision at the largest maxDets only
        mine = ours.accumulate(subset, ranges=2, summary=True)
        np.testing.assert_allclose(
            mine["precision"][..., -1], fresh["precision"][..., :2, -1], rtol=0, atol=1e-12
        )
        assert (mine["precision"][..., :-1] == -1).all()
        np.testing.assert_allclose(mine["recall"], fresh["recall"][..., :2, :], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_matched_ground_truth_equals_pycocotools_dt_matches(seed):
    gt, dt = _coco(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, dt, "bbox")
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.params.iouThrs = np.array([0.5])
        ev.evaluate()
    expected = {}
    for e in ev.evalImgs:
        if e is not None:
            expected.update(zip(e["dtIds"], e["dtMatches"][0], strict=True))
    ours = _ours(gt, dt, [(0.0, 1e10)], iou_thrs=np.array([0.5]))
    found = ours.matched_gt()
    got = dict(zip(ours.dt.ids, np.where(found >= 0, ours.gt.ids[found], 0), strict=True))
    assert got == {d: int(m) for d, m in expected.items()}
    assert len(got) < len(dt.dataset["annotations"])  # beyond maxDets: not evaluated
