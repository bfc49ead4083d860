"""boxeval (our vectorised COCO bbox evaluation) against pycocotools on generated edge cases:
crowd regions, tied scores, duplicated objects (tied IoUs), more than maxDets detections of one image and class, ground truth
outside area ranges, a ground-truth id 0, images without detections or labels; and keypoint
(OKS) evaluation on generated people. Every entry of pycocotools' precision and recall arrays
must be equal, for the whole set and for subsets."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from qm_dagster.boxeval import Boxes, BoxEvaluation
from tests.cocoref import counts_at_50, fresh_pycocotools, sliced

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
    return fresh_pycocotools(gt, dt, image_ids, area_rng=AREAS).eval


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


def _keypoint_dataset(seed: int) -> tuple[COCO, COCO]:
    """People with COCO's 17 keypoints: some hidden (v = 0), some with none labelled (ignored
    ground truth), a crowd; detections are jittered copies and strays, with tied scores."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 400, "height": 400} for i in range(1, 26)]
    anns, dets = [], []
    for img in images[:-2]:
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 300, 2)
            w, h = rng.uniform(8, 120, 2)
            points = np.stack(
                [x + rng.uniform(0, w, 17), y + rng.uniform(0, h, 17), rng.choice([0, 1, 2], 17)],
                axis=1,
            )
            if rng.random() < 0.15:
                points[:, 2] = 0  # nothing labelled: num_keypoints 0
            points[points[:, 2] == 0, :2] = 0
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": float(w * h * rng.uniform(0.4, 1.0)),
                    "iscrowd": int(rng.random() < 0.05),
                    "keypoints": points.ravel().tolist(),
                    "num_keypoints": int((points[:, 2] > 0).sum()),
                }
            )
    for a in anns:
        for _ in range(rng.integers(0, 3)):
            x, y, w, h = a["bbox"]
            points = np.stack(
                [x + rng.uniform(0, w, 17), y + rng.uniform(0, h, 17), np.ones(17)], axis=1
            )
            truth = np.asarray(a["keypoints"]).reshape(17, 3)
            seen = truth[:, 2] > 0
            points[seen, :2] = truth[seen, :2] + rng.normal(0, rng.uniform(0.2, 4), (seen.sum(), 2))
            dets.append(_keypoint_result(a["image_id"], points, round(float(rng.random()), 1)))
    for img in images[:-1]:
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 300, 2)
            points = np.stack([x + rng.uniform(0, 80, 17), y + rng.uniform(0, 80, 17)], axis=1)
            dets.append(_keypoint_result(img["id"], points, round(float(rng.random()), 1)))
    gt = COCO()
    gt.dataset = {
        "images": images,
        "categories": [{"id": 1, "name": "person"}],
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        return gt, gt.loadRes(dets)


def _keypoint_result(image_id: int, points: np.ndarray, score: float) -> dict:
    triples = np.column_stack([points[:, :2], np.ones(len(points))])
    return {
        "image_id": image_id,
        "category_id": 1,
        "keypoints": triples.ravel().tolist(),
        "score": score,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keypoint_evaluation_equals_pycocotools(seed):
    """OKS matching (labelled keypoints, the enlarged box where none is labelled, ignored
    ground truth without keypoints, crowds): precision and recall arrays and the 10 keypoint
    statistics equal pycocotools' ``iouType="keypoints"``, whole and on subsets."""
    from qm_dagster.evaluation import KEYPOINT_STATS, evaluate, image_subset, keypoint_stats

    gt, dt = _keypoint_dataset(seed)
    ours = evaluate(
        Boxes.from_coco(gt.dataset["annotations"], detections=False).with_keypoints(
            [a["keypoints"] for a in gt.dataset["annotations"]]
        ),
        Boxes.from_coco(dt.dataset["annotations"], detections=True).with_keypoints(
            [a["keypoints"] for a in dt.dataset["annotations"]]
        ),
        gt.getImgIds(),
        gt.getCatIds(),
        iou_type="keypoints",
    )

    def fresh(image_ids=None):
        return fresh_pycocotools(gt, dt, image_ids, iou_type="keypoints")

    reference = fresh()
    result = ours.accumulate()
    for key in ("precision", "recall"):
        np.testing.assert_allclose(result[key], reference.eval[key], rtol=0, atol=1e-12)
    summary = keypoint_stats(result)
    assert [summary[k] for k in KEYPOINT_STATS] == pytest.approx(reference.stats, abs=1e-12)
    assert 0.05 < summary["AP"] < 0.95 and summary["AP_medium"] > -1
    ids = np.array(sorted(gt.getImgIds()))
    rng = np.random.default_rng(seed)
    for _ in range(4):
        subset = np.sort(rng.choice(len(ids), int(rng.integers(3, len(ids))), replace=False))
        row = keypoint_stats(image_subset(ours, subset))
        assert [row[k] for k in KEYPOINT_STATS] == pytest.approx(
            fresh(ids[subset]).stats, abs=1e-12
        )


def test_sliced_evaluation_keypoint_rows_equal_pycocotools():
    """Keypoint results without boxes import (their box: the keypoints' extent, as loadRes
    makes it) and sliced evaluation adds OKS rows: the whole version's and each bucket's 10
    keypoint statistics equal pycocotools' keypoint evaluation of that subset; the columns a
    keypoint evaluation does not define are -1."""
    import pandas as pd

    from qm_dagster.coco import parse_instances, parse_results
    from qm_dagster.evaluation import KEYPOINT_STATS

    gt, dt = _keypoint_dataset(0)
    images = [{**i, "file_name": f"{i['id']}.jpg"} for i in gt.dataset["images"]]
    tables = parse_instances({**gt.dataset, "images": images}, "a.json")
    kept = ("image_id", "category_id", "keypoints", "score")
    results = [{k: d[k] for k in kept} for d in dt.dataset["annotations"]]
    preds = parse_results(results, "r.json", tables.images.image_id, tables.categories)
    boxes = preds[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy()
    np.testing.assert_allclose(boxes, [d["bbox"] for d in dt.dataset["annotations"]])
    preds = preds.assign(model="pose")
    manifest = tables.images.assign(width=400, height=400)
    ids = sorted(gt.getImgIds())
    image_table = pd.DataFrame({"image_id": ids, "data/x": np.arange(len(ids), dtype=float)})
    frame = sliced(manifest, tables.annotations, tables.categories, preds, image_table)
    points = frame[frame.iou_type == "keypoints"]
    assert set(frame.iou_type) == {"bbox", "keypoints"}
    columns = [{"AR": "AR20"}.get(k, k) for k in KEYPOINT_STATS]
    overall = points[points.metric == "all"].iloc[0]
    reference = fresh_pycocotools(gt, dt, iou_type="keypoints").stats
    assert [overall[c] for c in columns] == pytest.approx(reference, abs=1e-12)
    assert (overall[["AP_small", "AR1", "AR10", "AR100", "AR_small"]] == -1).all()
    buckets = points[points.metric == "data/x"]
    xs = image_table["data/x"].to_numpy()
    assert len(buckets) == 5
    for row in buckets.itertuples():
        last = row.bucket == len(buckets) - 1
        inside = (xs >= row.lo) & ((xs <= row.hi) if last else (xs < row.hi))
        subset = np.asarray(ids)[inside]
        assert row.n_images == len(subset) > 0
        fresh = fresh_pycocotools(gt, dt, subset, iou_type="keypoints")
        assert [getattr(row, c) for c in columns] == pytest.approx(fresh.stats, abs=1e-12)
        assert (row.tp, row.fp, row.fn) == counts_at_50(fresh)
