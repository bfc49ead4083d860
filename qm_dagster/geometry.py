"""Boxes and masks of COCO objects, through pycocotools' own RLE code (so IoUs and areas are COCO's)."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
from pycocotools import mask as mask_utils


def boxes(frame: pd.DataFrame) -> np.ndarray:
    """``N x 4`` float64 array of COCO ``[x, y, w, h]`` boxes."""
    return frame[["bbox_x", "bbox_y", "bbox_w", "bbox_h"]].to_numpy(dtype=np.float64)


def box_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU matrix of xywh boxes as pycocotools computes it (``crowd`` marks ``b`` entries whose
    IoU is intersection over the area of the ``a`` box, COCO's crowd rule)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    flags = np.zeros(len(b), np.uint8) if crowd is None else np.asarray(crowd, np.uint8)
    return np.asarray(mask_utils.iou(a.tolist(), b.tolist(), flags.tolist()), dtype=np.float64)


def same_image_pairs(left: pd.Series, right: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(i, j)`` of every pair with ``left[i] == right[j]`` (image ids), sorted by
    ``i`` then ``j``: a join, no loop over images."""
    a = pd.DataFrame({"image_id": left.to_numpy(), "i": np.arange(len(left))})
    b = pd.DataFrame({"image_id": right.to_numpy(), "j": np.arange(len(right))})
    joined = a.merge(b, on="image_id").sort_values(["i", "j"], kind="stable")
    return joined.i.to_numpy(), joined.j.to_numpy()


def pair_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (xywh rows), with pycocotools' own arithmetic (same order of
    operations, so equal to ``box_iou``'s entries; ``crowd`` marks pairs whose ``b`` is a crowd
    region: intersection over ``a``'s area): the vectorised form for paired rows."""
    w = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    if crowd is not None:
        union = np.where(np.asarray(crowd, bool), a[:, 2] * a[:, 3], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def rle(segmentation: str | None, bbox: np.ndarray, height: int, width: int) -> dict:
    """The object's RLE at image size: its polygons or RLE, or its box when it has no mask."""
    if segmentation is None:
        return box_rles(np.asarray([bbox]), height, width)[0]
    return parsed_rle(orjson.loads(segmentation), height, width)


def box_rles(boxes_: np.ndarray, height: int, width: int) -> list[dict]:
    """The RLEs at one image size of ``N x 4`` xywh boxes, in one pycocotools call."""
    if not len(boxes_):
        return []
    return mask_utils.frPyObjects(np.ascontiguousarray(boxes_, dtype=np.float64), height, width)


def parsed_rle(seg: list | dict, height: int, width: int) -> dict:
    """The RLE at image size of a parsed COCO segmentation (polygon list or RLE dict)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    return {"size": seg["size"], "counts": seg["counts"].encode("ascii")}


def mask_iou(rles: list[dict], others: list[dict] | None = None) -> np.ndarray:
    """Mask IoU matrix (pycocotools ``mask.iou``, no crowd rule)."""
    others = rles if others is None else others
    if not rles or not others:
        return np.zeros((len(rles), len(others)))
    return np.asarray(mask_utils.iou(rles, others, [0] * len(others)), dtype=np.float64)


def area(rle_: dict) -> float:
    return float(mask_utils.area(rle_))


def box_pixels(
    box: np.ndarray, height: np.ndarray, width: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pixels pycocotools' box RLE (``frPyObjects`` of an xywh box, rasterised as a
    polygon by ``rleFrPoly``) covers, as half-open rectangles ``[c0, c1) x [r0, r1)``, for all
    boxes at once: corners scaled by 5 and rounded as its C code does, a column where its
    centre's scaled coordinate 5c + 2 lies on the top edge, rows from the two edges' clamped
    ceilings. Tests compare it with pycocotools' own encoding."""
    x0, y0 = box[:, 0], box[:, 1]
    scaled = [np.trunc(5.0 * v + 0.5) for v in (x0, x0 + box[:, 2], y0, y0 + box[:, 3])]
    u0, u1, v0, v1 = scaled  # w, h >= 0: already ordered
    c0 = np.maximum(np.ceil((u0 - 2) / 5), 0)
    c1 = np.minimum(np.floor((u1 - 3) / 5), width - 1) + 1
    r0, r1 = (np.ceil(np.clip((v + 0.5) / 5.0 - 0.5, 0, height)) for v in (v0, v1))
    c1, r1 = np.maximum(c1, c0), np.maximum(r1, r0)
    return c0, c1, r0, r1


def rectangle_union_areas(
    group: np.ndarray, c0: np.ndarray, c1: np.ndarray, r0: np.ndarray, r1: np.ndarray
) -> pd.Series:
    """Area of the union of the half-open rectangles [c0, c1) x [r0, r1) of each ``group``,
    exact for integer corners, with no loop over groups: each group's column edges cut it into
    strips, and a strip's covered height is the union of the row intervals spanning it."""
    rects = pd.DataFrame({"g": group, "c0": c0, "c1": c1, "r0": r0, "r1": r1})
    rects = rects[(rects.c1 > rects.c0) & (rects.r1 > rects.r0)]
    edges = pd.concat(
        [
            rects[["g", "c0"]].set_axis(["g", "x"], axis=1),
            rects[["g", "c1"]].set_axis(["g", "x"], axis=1),
        ]
    )
    edges = edges.drop_duplicates().sort_values(["g", "x"], kind="stable")
    strips = edges.assign(right=edges.groupby("g").x.shift(-1)).dropna(subset=["right"])
    strips = strips.assign(strip=np.arange(len(strips)))
    spans = strips.merge(rects, on="g")
    spans = spans[(spans.c0 <= spans.x) & (spans.c1 >= spans.right)]
    spans = spans.sort_values(["strip", "r0"], kind="stable")
    reach = spans.groupby("strip").r1.cummax()
    before = reach.groupby(spans.strip).shift(1).fillna(-np.inf).to_numpy()
    height = np.maximum(0.0, spans.r1.to_numpy() - np.maximum(spans.r0.to_numpy(), before))
    per_strip = pd.Series(height).groupby(spans.strip.to_numpy()).sum()
    strips = strips.set_index("strip")
    area = (
        ((strips.right - strips.x) * per_strip.reindex(strips.index, fill_value=0.0))
        .groupby(strips.g)
        .sum()
    )
    return area.reindex(pd.unique(np.asarray(group)), fill_value=0.0)


def union_area(rles: list[dict]) -> float:
    """Pixels covered by any of ``rles``."""
    if not rles:
        return 0.0
    return float(mask_utils.area(mask_utils.merge(rles, intersect=0)))


def decode(rle_: dict) -> np.ndarray:
    """Boolean mask (H x W) of an RLE."""
    return mask_utils.decode(rle_).astype(bool)
