"""Sequence metrics on a generated sequence with a known gap, class flip and shape change."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from qm_dagster.metrics import get, load_metrics
from qm_dagster.metrics.tables import Tables

load_metrics()
SQUARE = [10, 10, 50, 10, 50, 50, 10, 50]
TRIANGLE = [10, 50, 30, 10, 50, 50]


def shaped(poly: list[float], dx: float = 0) -> dict:
    """Box and segmentation columns of ``poly`` moved ``dx`` pixels right."""
    poly = [c + dx if i % 2 == 0 else c for i, c in enumerate(poly)]
    xs, ys = poly[0::2], poly[1::2]
    return {
        "bbox_x": min(xs),
        "bbox_y": min(ys),
        "bbox_w": max(xs) - min(xs),
        "bbox_h": max(ys) - min(ys),
        "segmentation": json.dumps([poly]),
    }


def sequence() -> Tables:
    images = pd.DataFrame(
        {
            "image_id": range(1, 7),
            "video_id": "cam",
            "frame_index": range(6),
            "width": 100,
            "height": 100,
            "coco_width": 100,
            "coco_height": 100,
        }
    )
    rows = []

    def add(frame, track, cat, poly, dx=0):
        rows.append(
            {
                "annotation_id": len(rows) + 1,
                "image_id": frame + 1,
                "category_id": cat,
                "category": str(cat),
                **shaped(poly, dx),
                "area": None,
                "iscrowd": 0,
                "track_id": str(track),
                "keypoints": None,
            }
        )

    for f in (0, 1, 2, 4, 5):  # track 1 is missing in frame 3: a gap of one frame
        add(f, 1, 1, SQUARE, dx=f)
    for f in range(4):  # track 2 flips class at frame 3
        add(f, 2, 1 if f < 3 else 2, SQUARE, dx=40)
    for f in range(3):  # track 3 changes shape at frame 2
        add(f, 3, 1, SQUARE if f < 2 else TRIANGLE)
    ann = pd.DataFrame(rows)
    ann.loc[len(ann)] = {**rows[0], "annotation_id": 99, "track_id": None}  # untracked
    return Tables(images, ann)


def by_track(name: str, t: Tables) -> dict[tuple[str, int], float]:
    values = get(name, "object").fn(t)
    frames = t.annotations.image_id - 1
    return {
        (tr, f): v
        for tr, f, v in zip(t.annotations.track_id, frames, values, strict=True)
        if tr is not None
    }


def test_track_gap():
    t = sequence()
    gap = by_track("track_gap", t)
    assert gap[("1", 4)] == 1.0
    assert [gap[("1", f)] for f in (0, 1, 2, 5)] == [0.0, 0.0, 0.0, 0.0]
    assert all(gap[("2", f)] == 0.0 for f in range(4))
    assert np.isnan(get("track_gap", "object").fn(t)[-1])  # no track


def test_class_flip():
    flip = by_track("class_flip", sequence())
    assert [flip[("2", f)] for f in range(4)] == [0.0, 0.0, 0.0, 1.0]
    assert all(flip[("1", f)] == 0.0 for f in (0, 1, 2, 4, 5))


def test_shape_similarity():
    shape = by_track("shape_similarity", sequence())
    assert np.isnan(shape[("3", 0)])  # nothing to compare with
    assert shape[("3", 1)] == pytest.approx(1.0)  # the same square
    assert shape[("1", 1)] == pytest.approx(1.0, abs=1e-6)  # the square moved one pixel
    assert shape[("3", 2)] < 0.9  # square -> triangle


def _mask(poly: list[float]) -> np.ndarray:
    """The polygon's mask drawn by OpenCV (not pycocotools), cropped to its box."""
    canvas = np.zeros((100, 100), np.uint8)
    points = np.round(np.array(poly, float).reshape(-1, 2)).astype(np.int32)
    cv2.fillPoly(canvas, [points], 1)
    ys, xs = np.nonzero(canvas)
    return canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def predicted_sequence(tracked: bool) -> Tables:
    """One model's predictions on the sequence's frames: a square moving one pixel a frame
    (steady), a square that becomes a triangle at frame 2, and on frame 1 a triangle of
    another class over the second square (never its match)."""
    t = sequence()
    rows = []

    def add(frame, track, cat, poly, dx=0):
        rows.append(
            {
                "model": "m",
                "prediction_id": len(rows) + 1,
                "image_id": frame + 1,
                "category_id": cat,
                "category": str(cat),
                **shaped(poly, dx),
                "score": 0.9,
                "track_id": str(track) if tracked else None,
            }
        )

    for f in range(4):
        add(f, "steady", 1, SQUARE, dx=f)
    add(1, "other", 2, TRIANGLE, dx=45)  # listed first: it would win a tie on IoU alone
    for f in range(3):
        add(f, "changes", 1, SQUARE if f < 2 else TRIANGLE, dx=45)
    return Tables(t.images, t.annotations, pd.DataFrame(rows))


@pytest.mark.parametrize("tracked", [True, False])
def test_model_shape_similarity_on_tracked_and_untracked_predictions(tracked):
    """model/shape_similarity: a steady track is 1, the shape change equals OpenCV's own
    matchShapes of the two shapes; untracked predictions find the same previous object by
    same-class IoU with the previous frame, never the other class's triangle."""
    t = predicted_sequence(tracked)
    values = get("shape_similarity", "prediction").fn(t)
    preds = t.predictions
    steady = values[:4]
    assert np.isnan(steady[0]) and steady[1:] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    changes = values[5:8]
    assert np.isnan(changes[0]) and changes[1] == pytest.approx(1.0, abs=1e-6)
    distance = cv2.matchShapes(_mask(SQUARE), _mask(TRIANGLE), cv2.CONTOURS_MATCH_I1, 0)
    assert changes[2] == pytest.approx(1 / (1 + distance), abs=0.02)
    assert changes[2] < 0.9
    assert np.isnan(values[4]) and len(values) == len(preds)  # the triangle: no predecessor


def test_occlusion_risk():
    """Track 1 (five appearances of one square) is 0 everywhere; squashed to half its height
    in its last frame: area ratio 1/2 and aspect ratio 2 against the track's medians, so
    1 - 1/2 * 1/2 = 0.75 by hand. Track 3 (three appearances) has its own medians; tracks of
    fewer appearances and untracked objects are NaN."""
    t = sequence()
    ann = t.annotations
    last = ann.index[(ann.track_id == "1") & (ann.image_id == 6)][0]
    squashed = {**shaped([10, 10, 50, 10, 50, 30, 10, 30], dx=5)}
    for column, value in squashed.items():
        ann.at[last, column] = value
    risk = by_track("occlusion_risk", Tables(t.images, ann))
    assert [risk[("1", f)] for f in (0, 1, 2, 4)] == pytest.approx([0, 0, 0, 0], abs=1e-12)
    assert risk[("1", 5)] == pytest.approx(0.75, abs=1e-9)
    assert all(np.isfinite(risk[("3", f)]) for f in range(3))
    assert risk[("2", 0)] == pytest.approx(0.0)  # four appearances of one square
    assert np.isnan(get("occlusion_risk", "object").fn(Tables(t.images, ann))[-1])
