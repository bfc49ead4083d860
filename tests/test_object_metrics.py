"""Object pixel metrics (same decode pass) against numpy on the object's own pixels."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from qm_dagster.metrics import load_metrics, metrics
from qm_dagster.metrics.kernels import masked_sums
from qm_dagster.metrics.view import ImageView
from qm_dagster.passes.image_pass import Predicted, measure_images
from tests.images import content_id, real_photos, write_image
from tests.test_image_metrics import _numpy_laplacian

load_metrics()
OBJECT_METRICS = [
    "object_brightness",
    "object_contrast",
    "object_sharpness",
    "object_colorfulness",
    "object_red",
    "object_green",
    "object_blue",
]


def reference(rgb: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The image metrics' formulas on the pixels under ``mask`` (full-image Laplacian)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(float)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    r, g, b = (rgb[..., i].astype(float)[mask] for i in range(3))
    rg, yb = r - g, (r + g) / 2 - b
    h, s, v = (hsv[..., i][mask] for i in range(3))
    lit = (s >= 50) & (v >= 40)
    return {
        "object_brightness": gray[mask].mean() / 255,
        "object_contrast": gray[mask].std() / 255,
        "object_sharpness": _numpy_laplacian(gray.astype(np.uint8))[mask].var(),
        "object_colorfulness": math.sqrt(rg.var() + yb.var())
        + 0.3 * math.hypot(rg.mean(), yb.mean()),
        "object_red": np.mean(lit & ((h <= 10) | (h >= 170))),
        "object_green": np.mean(lit & (h >= 35) & (h <= 75)),
        "object_blue": np.mean(lit & (h >= 90) & (h <= 130)),
    }


# Two parts of one object (a triangle and a quadrilateral), fractional vertices, inside its box.
POLYGONS = [
    [300.4, 350.0, 420.7, 360.2, 350.5, 470.2],
    [400.0, 400.0, 450.4, 400.0, 450.4, 440.6, 420.2, 455.1],
]


def _one_image(tmp_path) -> tuple[np.ndarray, pd.DataFrame]:
    rgb = real_photos()["astronaut"]
    path = tmp_path / "a.png"
    write_image(path, rgb)
    manifest = pd.DataFrame(
        {
            "image_id": ["a.png"],
            "url": [str(path)],
            "content_hash": [content_id(path)],
            "bytes": [path.stat().st_size],
            "ok": [True],
            "width": [rgb.shape[1]],
            "height": [rgb.shape[0]],
        }
    )
    return rgb, manifest


def test_object_metrics_match_numpy_on_masks(tmp_path):
    rgb, manifest = _one_image(tmp_path)  # 512 x 512
    h, w = rgb.shape[:2]
    rle_mask = np.zeros((h, w), np.uint8)
    cv2.circle(rle_mask, (300, 200), 60, 1, -1)
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle_json = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    ann = pd.DataFrame(
        {
            "annotation_id": [1, 2, 3, 4],
            "image_id": "a.png",
            "category_id": 1,
            "category": "x",
            "bbox_x": [20.0, 240.0, 100.5, 300.4],
            "bbox_y": [30.0, 140.0, 300.2, 350.0],
            "bbox_w": [150.0, 121.0, 80.0, 150.0],
            "bbox_h": [90.0, 121.0, 40.0, 120.2],
            "area": None,
            "iscrowd": [0, 1, 0, 0],
            "track_id": None,
            "annotator": None,
            "keypoints": None,
            "segmentation": [None, json.dumps(rle_json), None, json.dumps(POLYGONS)],
        }
    )
    specs = [s for s in metrics("object", ()) if s.name in OBJECT_METRICS]
    result = measure_images(manifest, specs, str(tmp_path / "out"), "v", annotations=ann)
    assert result.decoded == 1
    tables = {n: result.table(f"label/{n}") for n in OBJECT_METRICS}
    got = {n: t.set_index("annotation_id").value for n, t in tables.items()}

    box = np.zeros((h, w), bool)
    box[30:120, 20:170] = True
    assert {n: got[n][1] for n in OBJECT_METRICS} == pytest.approx(reference(rgb, box), rel=1e-9)
    disc = mask_utils.decode(rle).astype(bool)
    assert {n: got[n][2] for n in OBJECT_METRICS} == pytest.approx(reference(rgb, disc), rel=1e-9)
    fractional = np.zeros((h, w), bool)  # box pixels are floor(x) .. ceil(x + w) - 1
    fractional[300:341, 100:181] = True
    assert {n: got[n][3] for n in OBJECT_METRICS} == pytest.approx(
        reference(rgb, fractional), rel=1e-9
    )
    polygons = np.zeros((h, w), np.uint8)  # drawn at image coordinates, rounded vertices
    for poly in POLYGONS:
        cv2.fillPoly(polygons, [np.rint(np.reshape(poly, (-1, 2))).astype(np.int32)], 1)
    assert {n: got[n][4] for n in OBJECT_METRICS} == pytest.approx(
        reference(rgb, polygons.astype(bool)), rel=1e-9
    )
    assert list(tables["object_brightness"].category) == ["x"] * 4


def test_empty_and_out_of_image_boxes_are_nan_not_errors(tmp_path):
    rgb = real_photos()["coffee"]
    write_image(tmp_path / "c.png", rgb)
    ann = pd.DataFrame(
        {
            "annotation_id": [1, 2],
            "image_id": "c.png",
            "category_id": 1,
            "category": "x",
            "bbox_x": [10.0, 5000.0],
            "bbox_y": [10.0, 10.0],
            "bbox_w": [0.0, 20.0],
            "bbox_h": [5.0, 20.0],
            "area": None,
            "iscrowd": 0,
            "track_id": None,
            "annotator": None,
            "keypoints": None,
            "segmentation": None,
        }
    )
    manifest = pd.DataFrame(
        {
            "image_id": ["c.png"],
            "url": [str(tmp_path / "c.png")],
            "content_hash": [content_id(tmp_path / "c.png")],
            "bytes": [(tmp_path / "c.png").stat().st_size],
            "ok": [True],
            "width": [rgb.shape[1]],
            "height": [rgb.shape[0]],
        }
    )
    specs = [s for s in metrics("object", ()) if s.name in OBJECT_METRICS]
    result = measure_images(manifest, specs, str(tmp_path / "out"), "v", annotations=ann)
    assert result.failures.empty
    assert result.table("label/object_brightness").value.isna().all()


def test_fused_sums_are_exact_on_a_wide_extreme_object():
    """The fused kernel against int64 numpy sums, on a 2600 px wide checkerboard of saturated
    colours (Laplacian at +-1020, every hue band) and a polygon mask."""
    h, w = 300, 2600
    yy, xx = np.mgrid[:h, :w]
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]])
    pairs = np.array([[3, 4], [0, 1], [1, 2], [2, 0]])[(xx // 7) % 4]  # white/black, red/green...
    rgb = colours[np.take_along_axis(pairs, ((yy + xx) % 2)[..., None], 2)[..., 0]]
    rgb = rgb.astype(np.uint8)
    view = ImageView.from_rgb(rgb)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.array([[3, 5], [2590, 40], [2400, 295], [10, 280]], np.int32)], 255)
    y0, x0 = 2, 1
    roi = mask[y0:, x0:]
    sums = masked_sums(*_kernel_planes(view), np.ascontiguousarray(roi), y0, x0)

    sel = np.zeros((h, w), bool)
    sel[y0:, x0:] = roi > 0
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.int64)[sel]
    lap = _numpy_laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).astype(np.int64)[sel]
    assert np.abs(lap).max() == 1020
    r, g, b = (rgb[..., i].astype(np.int64)[sel] for i in range(3))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, lit = hsv[..., 0][sel], (hsv[..., 1][sel] >= 50) & (hsv[..., 2][sel] >= 40)
    bands = [(hue <= 10) | (hue >= 170), (hue >= 35) & (hue <= 75), (hue >= 90) & (hue <= 130)]
    expected = (
        [sel.sum(), gray.sum(), (gray**2).sum(), lap.sum(), (lap**2).sum()]
        + [b.sum(), g.sum(), r.sum()]
        + [((r - g) ** 2).sum(), ((r - b) ** 2).sum(), ((g - b) ** 2).sum()]
        + [(lit & band).sum() for band in bands]
    )
    assert list(sums) == [int(e) for e in expected]
    assert all(count > 0 for count in sums[-3:])


def _kernel_planes(view: ImageView) -> tuple[np.ndarray, ...]:
    return (view.gray, view.laplacian, *view.bgr_planes, *view.hsv_planes)


def _predictions(rows: list[tuple]) -> pd.DataFrame:
    """(model, id, box, score, segmentation) rows as the dataset/predictions table."""
    return pd.DataFrame(
        {
            "model": [r[0] for r in rows],
            "prediction_id": [r[1] for r in rows],
            "image_id": "a.png",
            "category_id": 1,
            "category": "x",
            "bbox_x": [r[2][0] for r in rows],
            "bbox_y": [r[2][1] for r in rows],
            "bbox_w": [r[2][2] for r in rows],
            "bbox_h": [r[2][3] for r in rows],
            "score": [r[3] for r in rows],
            "segmentation": [r[4] for r in rows],
            "track_id": None,
        }
    )


def test_object_metrics_on_predicted_objects_of_the_chosen_models(tmp_path):
    """model/object_* on the predictions of the configured model scoring at least the
    threshold, equal to numpy on the predicted box / mask; other models and low scores left
    out; a rerun on the same bytes decodes nothing."""
    rgb, manifest = _one_image(tmp_path)
    h, w = rgb.shape[:2]
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (300, 200), 60, 1, -1)
    rle = mask_utils.encode(np.asfortranarray(disc))
    rle_json = json.dumps({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    predictions = _predictions(
        [
            ("m1", 1, (20.0, 30.0, 150.0, 90.0), 0.9, None),
            ("m1", 2, (240.0, 140.0, 121.0, 121.0), 0.6, rle_json),
            ("m1", 3, (0.0, 0.0, 50.0, 50.0), 0.1, None),  # below the score threshold
            ("m2", 1, (0.0, 0.0, 60.0, 60.0), 0.9, None),  # a model not configured
        ]
    )
    specs = metrics("prediction", (), on_predictions=True)
    specs = [s for s in specs if s.name in OBJECT_METRICS]
    assert {s.asset_key for s in specs} == {f"model/{n}" for n in OBJECT_METRICS}
    predicted = Predicted(predictions, ("m1",), 0.5)
    out = str(tmp_path / "out")
    result = measure_images(manifest, specs, out, "v", predicted=predicted)
    assert result.decoded == 1
    tables = {n: result.table(f"model/{n}") for n in OBJECT_METRICS}
    first = tables["object_brightness"]
    assert list(first.columns) == ["model", "prediction_id", "image_id", "category", "value"]
    assert list(zip(first.model, first.prediction_id, strict=True)) == [("m1", 1), ("m1", 2)]
    got = {n: t.set_index("prediction_id").value for n, t in tables.items()}
    box = np.zeros((h, w), bool)
    box[30:120, 20:170] = True
    assert {n: got[n][1] for n in OBJECT_METRICS} == pytest.approx(reference(rgb, box), rel=1e-9)
    masked = {n: got[n][2] for n in OBJECT_METRICS}
    assert masked == pytest.approx(reference(rgb, disc.astype(bool)), rel=1e-9)

    again = measure_images(manifest, specs, out, "v2", predicted=predicted)
    assert again.decoded == 0
    assert again.table("model/object_brightness").equals(first)


def test_a_predicted_box_equal_to_an_annotated_one_reuses_its_values(tmp_path):
    """The cache is keyed by content: label/object_brightness of an annotated box serves the
    same box predicted on the same bytes (no decode)."""
    _, manifest = _one_image(tmp_path)
    box = (20.0, 30.0, 150.0, 90.0)
    annotations = _predictions([("gt", 7, box, 1.0, None)]).drop(columns=["model", "score"])
    annotations = annotations.rename(columns={"prediction_id": "annotation_id"}).assign(
        area=None, iscrowd=0, annotator=None, keypoints=None
    )
    out = str(tmp_path / "out")
    label = [s for s in metrics("object", ()) if s.name == "object_brightness"]
    labelled = measure_images(manifest, label, out, "v", annotations=annotations)
    model = [s for s in metrics("prediction", (), True) if s.name == "object_brightness"]
    predicted = Predicted(_predictions([("m", 1, box, 0.9, None)]), ("*",), 0.5)
    result = measure_images(manifest, model, out, "v", predicted=predicted)
    assert result.decoded == 0
    expected = labelled.table("label/object_brightness").value
    assert result.table("model/object_brightness").value.tolist() == expected.tolist()
