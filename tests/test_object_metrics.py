"""Object pixel metrics (same decode pass) against numpy on the object's own pixels."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from qm_dagster.image_pass import measure_images
from qm_dagster.metrics import load_metrics, metrics
from tests.images import real_photos, write_image
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


def test_object_metrics_match_numpy_on_masks(tmp_path):
    rgb = real_photos()["astronaut"]  # 512 x 512
    path = tmp_path / "a.png"
    write_image(path, rgb)
    h, w = rgb.shape[:2]
    rle_mask = np.zeros((h, w), np.uint8)
    cv2.circle(rle_mask, (300, 200), 60, 1, -1)
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle_json = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    ann = pd.DataFrame(
        {
            "annotation_id": [1, 2, 3],
            "image_id": "a.png",
            "category_id": 1,
            "category": "x",
            "bbox_x": [20.0, 240.0, 100.5],
            "bbox_y": [30.0, 140.0, 300.2],
            "bbox_w": [150.0, 121.0, 80.0],
            "bbox_h": [90.0, 121.0, 40.0],
            "area": None,
            "iscrowd": [0, 1, 0],
            "track_id": None,
            "annotator": None,
            "keypoints": None,
            "segmentation": [None, json.dumps(rle_json), None],
        }
    )
    manifest = pd.DataFrame(
        {"image_id": ["a.png"], "url": [str(path)], "ok": [True], "width": [w], "height": [h]}
    )
    specs = [s for s in metrics("object", ()) if s.name in OBJECT_METRICS]
    result = measure_images(manifest, specs, annotations=ann)
    assert result.decoded == 1
    got = {n: result.values[n].set_index("annotation_id").value for n in OBJECT_METRICS}

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
    assert list(result.values["object_brightness"].category) == ["x", "x", "x"]


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
            "ok": [True],
            "width": [rgb.shape[1]],
            "height": [rgb.shape[0]],
        }
    )
    specs = [s for s in metrics("object", ()) if s.name in OBJECT_METRICS]
    result = measure_images(manifest, specs, annotations=ann)
    assert result.failures.empty
    assert result.values["object_brightness"].value.isna().all()
