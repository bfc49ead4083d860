"""Label metrics against pycocotools and hand-worked values, on the real COCO annotations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from qm_dagster.coco import parse_instances
from qm_dagster.metrics import get, load_metrics
from qm_dagster.metrics.tables import Tables
from tests.conftest import shared

load_metrics()


@pytest.fixture(scope="module")
def coco():
    path = shared("coco-val2014-fake100") / "instances_val2014_100.json"
    raw = json.loads(path.read_text())
    tables = parse_instances(raw, str(path))
    images = tables.images.assign(width=tables.images.coco_width, height=tables.images.coco_height)
    return raw, Tables(images, tables.annotations)


def value(name: str, t: Tables) -> np.ndarray:
    return np.asarray(get(name, "object").fn(t), dtype=float)


def test_object_area_is_the_coco_area(coco):
    raw, t = coco
    expected = [a["area"] for a in raw["annotations"]]
    assert value("object_area", t) == pytest.approx(expected, rel=0, abs=0)


def test_object_area_without_area_field_is_the_mask_area(coco):
    raw, t = coco
    no_area = Tables(t.images, t.annotations.assign(area=np.nan))
    sizes = {i["id"]: (i["height"], i["width"]) for i in raw["images"]}
    expected = []
    for a in raw["annotations"]:
        h, w = sizes[a["image_id"]]
        seg = a["segmentation"]
        rle = (
            mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            if isinstance(seg, list)
            else mask_utils.frPyObjects(seg, h, w)
            if isinstance(seg["counts"], list)
            else seg
        )
        expected.append(float(mask_utils.area(rle)))
    assert value("object_area", no_area) == pytest.approx(expected)


def _independent_ious(raw, image_id):
    """IoUs within one image straight from pycocotools: mask IoU for the (all-masked) COCO objects."""
    img = next(i for i in raw["images"] if i["id"] == image_id)
    anns = [a for a in raw["annotations"] if a["image_id"] == image_id]
    rles = []
    for a in anns:
        seg = a["segmentation"]
        if isinstance(seg, list):
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, img["height"], img["width"])))
        else:
            rles.append(
                mask_utils.frPyObjects(seg, img["height"], img["width"])
                if isinstance(seg["counts"], list)
                else seg
            )
    ious = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)))
    np.fill_diagonal(ious, 0)
    return anns, ious


def test_overlap_and_duplicate_equal_pycocotools_mask_iou(coco):
    raw, t = coco
    overlap = dict(zip(t.annotations.annotation_id, value("overlap", t), strict=True))
    duplicate = dict(
        zip(t.annotations.annotation_id, value("annotation_duplicate", t), strict=True)
    )
    checked = 0
    for image_id in sorted({a["image_id"] for a in raw["annotations"]})[:40]:
        anns, ious = _independent_ious(raw, image_id)
        cats = np.array([a["category_id"] for a in anns])
        for k, a in enumerate(anns):
            assert overlap[a["id"]] == pytest.approx(ious[k].max() if len(anns) > 1 else 0.0)
            same = np.where(cats == cats[k], ious[k], 0.0)
            assert duplicate[a["id"]] == pytest.approx(same.max() if len(anns) > 1 else 0.0)
            checked += 1
    assert checked > 300


def test_box_iou_without_masks_equals_pycocotools():
    images = pd.DataFrame(
        {
            "image_id": [1],
            "width": [100],
            "height": [100],
            "coco_width": [100],
            "coco_height": [100],
        }
    )
    boxes = [[0, 0, 10, 10], [5, 5, 10, 10], [50, 50, 20, 20]]
    ann = pd.DataFrame(
        {
            "annotation_id": [1, 2, 3],
            "image_id": 1,
            "category_id": [1, 1, 2],
            "category": ["a", "a", "b"],
            "bbox_x": [b[0] for b in boxes],
            "bbox_y": [b[1] for b in boxes],
            "bbox_w": [b[2] for b in boxes],
            "bbox_h": [b[3] for b in boxes],
            "area": np.nan,
            "iscrowd": 0,
            "segmentation": None,
            "keypoints": None,
            "track_id": None,
        }
    )
    t = Tables(images, ann)
    pair = 25 / (100 + 100 - 25)  # by hand: 5x5 intersection of two 10x10 boxes
    ref = np.asarray(mask_utils.iou(boxes[:2], boxes[:2], [0, 0]))[0, 1]
    assert value("overlap", t) == pytest.approx([pair, pair, 0.0])
    assert value("annotation_duplicate", t)[:2] == pytest.approx([ref, ref])


def test_border_proximity_by_hand(coco):
    raw, t = coco
    got = dict(zip(t.annotations.annotation_id, value("border_proximity", t), strict=True))
    sizes = {i["id"]: (i["width"], i["height"]) for i in raw["images"]}
    for a in raw["annotations"][:5]:
        W, H = sizes[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert got[a["id"]] == pytest.approx(max((x + w) / W, (y + h) / H, 1 - x / W, 1 - y / H))
    # first annotation of the file, worked out by hand: image 74 is 640x426, bbox
    # [61.87, 276.25, 296.42, 103.18] -> max(358.29/640, 379.43/426, 1-61.87/640, 1-276.25/426)
    #                                  = max(0.5598, 0.8907, 0.9033, 0.3515) = 1 - 61.87/640
    first = raw["annotations"][0]
    assert first["bbox"] == [61.87, 276.25, 296.42, 103.18]
    assert got[first["id"]] == pytest.approx(1 - 61.87 / 640)


def test_class_frequency_relative_area_and_counts(coco):
    raw, t = coco
    cats = pd.Series([a["category_id"] for a in raw["annotations"]])
    assert value("class_frequency", t) == pytest.approx(cats.map(cats.value_counts() / len(cats)))
    sizes = {i["id"]: i["width"] * i["height"] for i in raw["images"]}
    rel = [a["area"] / sizes[a["image_id"]] for a in raw["annotations"]]
    assert value("relative_area", t) == pytest.approx(rel)
    counts = get("object_count").fn(t)
    per_image = pd.Series([a["image_id"] for a in raw["annotations"]]).value_counts()
    assert counts == pytest.approx(t.images.image_id.map(per_image).fillna(0).to_numpy())


def test_keypoint_occlusion_by_hand():
    images = pd.DataFrame(
        {"image_id": [1], "width": [10], "height": [10], "coco_width": [10], "coco_height": [10]}
    )
    ann = pd.DataFrame(
        {
            "annotation_id": [1, 2],
            "image_id": 1,
            "category_id": 1,
            "category": "p",
            "bbox_x": 0.0,
            "bbox_y": 0.0,
            "bbox_w": 1.0,
            "bbox_h": 1.0,
            "area": 1.0,
            "iscrowd": 0,
            "segmentation": None,
            "track_id": None,
            "keypoints": [json.dumps([1, 1, 2, 2, 2, 1, 0, 0, 0, 3, 3, 2]), None],
        }
    )
    got = value("keypoint_occlusion", Tables(images, ann))
    assert got[0] == 0.5 and np.isnan(got[1])


def test_batched_rles_equal_pycocotools_object_by_object(coco):
    """Tables.rles encodes boxes one image size at a time: each RLE must equal pycocotools'
    own encoding of that object alone (mask polygons, or its box), on the real annotations with
    half of them stripped to boxes and one image of unknown size."""
    _, t = coco
    ann = t.annotations.copy()
    ann.loc[ann.index[::2], "segmentation"] = None
    images = t.images.copy()
    images.loc[images.index[0], ["width", "height", "coco_width", "coco_height"]] = None
    unknown = images.image_id.iloc[0]
    got = Tables(images, ann).rles
    size = images.set_index("image_id")
    for row, rle in zip(ann.itertuples(), got, strict=True):
        if row.image_id == unknown:
            assert rle is None
            continue
        h, w = int(size.height[row.image_id]), int(size.width[row.image_id])
        if row.segmentation is None:
            box = [[row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h]]
            expected = mask_utils.frPyObjects(np.asarray(box, dtype=np.float64), h, w)[0]
        elif isinstance(seg := json.loads(row.segmentation), list):  # polygons
            expected = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        else:  # an uncompressed (crowd) RLE
            expected = mask_utils.frPyObjects(seg, h, w)
        assert rle == expected
    assert sum(r is None for r in got) == (ann.image_id == unknown).sum() > 0


def test_box_pixels_are_pycocotools_box_rasterisation():
    """Random boxes (continuous, on tenths and on halves, partly outside the image, empty):
    the rectangle ``box_pixels`` gives is exactly the mask pycocotools encodes for the box."""
    from qm_dagster.geometry import box_pixels

    rng = np.random.default_rng(3)
    for trial in range(30):
        h, w = (int(v) for v in rng.integers(5, 120, 2))
        boxes = np.stack(
            [
                rng.uniform(-10, w + 3, 100),
                rng.uniform(-10, h + 3, 100),
                rng.uniform(0, w / 2, 100),
                rng.uniform(0, h / 2, 100),
            ],
            axis=1,
        )
        boxes = np.round(boxes * (10, 2, 1e6)[trial % 3]) / (10, 2, 1e6)[trial % 3]
        masks = mask_utils.decode(mask_utils.frPyObjects(boxes, h, w))
        c0, c1, r0, r1 = box_pixels(boxes, np.full(100, h), np.full(100, w))
        for i in range(100):
            expected = np.zeros((h, w), np.uint8)
            expected[int(r0[i]) : int(r1[i]), int(c0[i]) : int(c1[i])] = 1
            assert np.array_equal(masks[:, :, i], expected), (boxes[i], h, w)


def _density_by_pycocotools(t: Tables) -> np.ndarray:
    """Union of each image's object masks (boxes where no mask) by pycocotools' merge."""
    out = []
    for image in t.images.itertuples():
        rows = t.annotations[t.annotations.image_id == image.image_id]
        rles = []
        for r in rows.itertuples():
            if r.segmentation is None:
                box = np.array([[r.bbox_x, r.bbox_y, r.bbox_w, r.bbox_h]], dtype=float)
                rles += mask_utils.frPyObjects(box, image.height, image.width)
            else:
                seg = json.loads(r.segmentation)
                rle = mask_utils.frPyObjects(seg, image.height, image.width)
                rles.append(mask_utils.merge(rle) if isinstance(rle, list) else rle)
        area = mask_utils.area(mask_utils.merge(rles, intersect=0)) if rles else 0
        out.append(area / (image.width * image.height))
    return np.array(out, dtype=float)


def test_object_density_is_the_union_of_masks_and_boxes(coco):
    """Masks (the COCO annotations), boxes only (the same objects without their masks), and a
    mix: each image's covered share equals pycocotools' merge of its objects' RLEs."""
    _, t = coco
    boxes_only = t.annotations.assign(segmentation=None)
    mixed = t.annotations.assign(
        segmentation=t.annotations.segmentation.where(t.annotations.image_id % 2 == 0, None)
    )
    for objects in (t.annotations, boxes_only, mixed):
        tables = Tables(t.images, objects)
        ours = np.asarray(get("object_density", "image").fn(tables), dtype=float)
        assert ours == pytest.approx(_density_by_pycocotools(tables), rel=0, abs=1e-15)
    assert (
        np.asarray(get("object_density", "image").fn(Tables(t.images, boxes_only))) > 0
    ).sum() > 40
