"""Built-in label (object-level) metrics read from the annotation table: no pixels needed.

Each returns one value per annotation row (or, for ``index="image"``, per manifest row).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from qm_dagster import geometry
from qm_dagster.metrics.registry import metric
from qm_dagster.metrics.tables import Tables


@metric(
    "object",
    "Object area in pixels: COCO `area` where given, else mask (or box) area",
    reads="table",
    value_range=(0, None),
    unit="px",
    outliers="log",  # sizes spread over decades: a large object is no outlier, a 1 px box is
)
def object_area(t: Tables) -> np.ndarray:
    given = t.annotations.area.to_numpy(dtype=float)
    missing = np.isnan(given)
    for i in np.flatnonzero(missing):
        rle = t.rles[i]
        given[i] = np.nan if rle is None else geometry.area(rle)
    return given


@metric("object", "Object area / image area", reads="table", value_range=(0, None), outliers="log")
def relative_area(t: Tables) -> np.ndarray:
    w, h = t.sizes_of(t.annotations)
    return object_area(t) / (w * h)


@metric("object", "Box width / box height", reads="table", value_range=(0, None), outliers="log")
def object_aspect_ratio(t: Tables) -> np.ndarray:
    b = geometry.boxes(t.annotations)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b[:, 3] > 0, b[:, 2] / np.where(b[:, 3] > 0, b[:, 3], 1), np.nan)


@metric(
    "object",
    "max(x2/W, y2/H, 1-x1/W, 1-y1/H): 1 = the box touches a border",
    reads="table",
    value_range=(0, 1),
)
def border_proximity(t: Tables) -> np.ndarray:
    b = geometry.boxes(t.annotations)
    w, h = t.sizes_of(t.annotations)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    return np.max(np.stack([x2 / w, y2 / h, 1 - x1 / w, 1 - y1 / h]), axis=0)


def _max_iou(t: Tables, same_class: bool) -> np.ndarray:
    """Per annotation: the largest IoU with another annotation of its image (of its class),
    0 when there is none."""
    first, second, ious = t.image_pairs
    if same_class:
        cats = t.annotations.category_id.to_numpy()
        keep = cats[first] == cats[second]
        first, ious = first[keep], ious[keep]
    out = np.zeros(len(t.annotations))
    np.maximum.at(out, first, ious)
    return out


@metric(
    "object",
    "Max IoU with another annotation of the same class in the image",
    reads="table",
    value_range=(0, 1),
)
def annotation_duplicate(t: Tables) -> np.ndarray:
    return _max_iou(t, same_class=True)


@metric(
    "object", "Max IoU with any other annotation in the image", reads="table", value_range=(0, 1)
)
def overlap(t: Tables) -> np.ndarray:
    return _max_iou(t, same_class=False)


@metric(
    "object",
    "Share of the object's class among the version's annotations",
    reads="table",
    value_range=(0, 1),
    drift="none",  # a function of the class shares, which drift tests as class_shares
)
def class_frequency(t: Tables) -> np.ndarray:
    shares = t.annotations.category_id.value_counts(normalize=True)
    return t.annotations.category_id.map(shares).to_numpy(dtype=float)


@metric(
    "object",
    "Share of the object's keypoints that are not visible (v != 2)",
    reads="table",
    value_range=(0, 1),
)
def keypoint_occlusion(t: Tables) -> np.ndarray:
    out = np.full(len(t.annotations), np.nan)
    for i, kps in enumerate(t.annotations.keypoints):
        if kps is not None:
            v = np.asarray(json.loads(kps), dtype=float)[2::3]
            if v.size:
                out[i] = float(np.mean(v != 2))
    return out


@metric("image", "Number of annotated objects in the image", reads="table", value_range=(0, None))
def object_count(t: Tables) -> np.ndarray:
    counts = t.annotations.image_id.value_counts()
    return t.images.image_id.map(counts).fillna(0).to_numpy(dtype=float)


@metric(
    "image",
    "Union of the object masks (boxes where no mask) / image area",
    reads="table",
    value_range=(0, 1),
)
def object_density(t: Tables) -> np.ndarray:
    """Images whose objects are all boxes: the union of the boxes' pixel rectangles (as
    pycocotools rasterises them), all images at once, no RLE encoded (on the 12k version the
    RLEs alone took 1.1 s); images with a mask merge their RLEs, an image at a time."""
    w, h = t.sizes_of(t.annotations)
    known = ~np.isnan(w)
    ids = t.annotations.image_id.to_numpy()
    with_mask = np.isin(ids, ids[known & t.has_mask])
    boxed = known & ~with_mask
    corners = geometry.box_pixels(geometry.boxes(t.annotations)[boxed], h[boxed], w[boxed])
    covered = geometry.rectangle_union_areas(ids[boxed], *corners).to_dict()
    masked = np.flatnonzero(known & with_mask)
    for rows in pd.Series(masked).groupby(ids[masked]).indices.values():
        covered[ids[masked[rows[0]]]] = geometry.union_area([t.rles[i] for i in masked[rows]])
    width, height = t.sizes_of(t.images)
    return t.images.image_id.map(covered).fillna(0).to_numpy(dtype=float) / (width * height)
