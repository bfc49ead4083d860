"""Sequence metrics: objects with a ``track_id`` on images with ``video_id`` + ``frame_index``.

Each annotation is compared with its track's previous appearance; rows without a track are NaN.
The helpers take any table of objects (annotations or one model's predictions), so model
metrics compare predictions the same way (``model.shape_similarity``).
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from qm_dagster import geometry
from qm_dagster.metrics.label import object_area
from qm_dagster.metrics.registry import metric
from qm_dagster.metrics.tables import Tables


def track_order(t: Tables, objects: pd.DataFrame | None = None) -> pd.DataFrame:
    """Tracked ``objects`` (the annotations by default) with their frame, sorted by (video,
    track, frame); ``prev`` is the row position of the same track's previous appearance (-1 for
    the first)."""
    objects = t.annotations if objects is None else objects
    frames = t.images.set_index("image_id")[["video_id", "frame_index"]]
    ann = objects[["image_id", "category_id", "track_id"]].join(frames, on="image_id")
    ann = ann.assign(row=np.arange(len(ann)))
    tracked = ann[ann.track_id.notna() & ann.frame_index.notna()]
    tracked = tracked.sort_values(["video_id", "track_id", "frame_index"], kind="stable")
    first = tracked.groupby(["video_id", "track_id"], sort=False).cumcount() == 0
    prev = tracked.row.shift(1).where(~first, -1).fillna(-1).astype(int)
    return tracked.assign(prev=prev.to_numpy())


def _crop_mask(objects: Tables, row: int) -> np.ndarray:
    x, y, w, h = geometry.boxes(objects.annotations.iloc[[row]])[0]
    mask = geometry.decode(objects.rles[row])
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    return mask[y0 : int(np.ceil(y + h)) + 1, x0 : int(np.ceil(x + w)) + 1].astype(np.uint8)


def shape_similarities(objects: Tables, prev: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Hu-moment similarity (1 / (1 + matchShapes I1)) of each object ``rows[i]`` of
    ``objects.annotations`` with the object ``prev[i]`` (NaN where ``prev`` is -1). In track
    order an object's predecessor is the previous row, so its mask is kept, not drawn again."""
    out = np.full(len(rows), np.nan)
    last_row, last_mask = -1, None
    for i, (p, r) in enumerate(zip(prev, rows, strict=True)):
        mask = _crop_mask(objects, r)
        if p >= 0:
            before = last_mask if p == last_row else _crop_mask(objects, p)
            out[i] = 1.0 / (1.0 + cv2.matchShapes(before, mask, cv2.CONTOURS_MATCH_I1, 0))
        last_row, last_mask = r, mask
    return out


def _by_track(t: Tables, values: pd.Series, tracked: pd.DataFrame) -> np.ndarray:
    out = np.full(len(t.annotations), np.nan)
    out[tracked.row.to_numpy()] = values.to_numpy(dtype=float)
    return out


@metric(
    "object",
    "Frames the track is missing between its previous appearance and this one",
    reads="table",
    value_range=(0, None),
    unit="frames",
)
def track_gap(t: Tables) -> np.ndarray:
    tracked = track_order(t)
    step = tracked.groupby(["video_id", "track_id"], sort=False).frame_index.diff() - 1
    return _by_track(t, step.fillna(0), tracked)


@metric(
    "object",
    "1 if the track's class differs from its previous appearance",
    reads="table",
    value_range=(0, 1),
)
def class_flip(t: Tables) -> np.ndarray:
    tracked = track_order(t)
    before = tracked.groupby(["video_id", "track_id"], sort=False).category_id.shift(1)
    return _by_track(t, (before.notna() & (before != tracked.category_id)).astype(float), tracked)


@metric(
    "object",
    "Hu-moment similarity of the mask with the track's previous appearance "
    "(1 / (1 + matchShapes I1); 1 = same shape)",
    reads="table",
    value_range=(0, 1),
)
def shape_similarity(t: Tables) -> np.ndarray:
    tracked = track_order(t)
    values = shape_similarities(t, tracked.prev.to_numpy(), tracked.row.to_numpy())
    return _by_track(t, pd.Series(values), tracked)


MIN_TRACK_APPEARANCES = 3  # a typical shape needs a few appearances


@metric(
    "object",
    "Occlusion risk: 1 - (area ratio x aspect ratio ratio) against the track's median area and "
    "median box aspect ratio, each ratio folded into (0, 1]; 0 = its usual shape",
    reads="table",
    value_range=(0, 1),
)
def occlusion_risk(t: Tables) -> np.ndarray:
    tracked = track_order(t)
    rows = tracked.row.to_numpy()
    area = object_area(t)[rows]
    box = geometry.boxes(t.annotations)[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = box[:, 2] / box[:, 3]
    shape = pd.DataFrame({"area": area, "aspect": aspect}, index=tracked.index)
    track = tracked.groupby(["video_id", "track_id"], sort=False)
    typical = shape.groupby([tracked.video_id, tracked.track_id], sort=False).transform("median")
    enough = track.row.transform("size").to_numpy() >= MIN_TRACK_APPEARANCES
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (shape / typical).to_numpy()
        folded = np.minimum(ratios, 1 / ratios)
    risk = np.where(enough, 1 - folded[:, 0] * folded[:, 1], np.nan)
    return _by_track(t, pd.Series(risk), tracked)
