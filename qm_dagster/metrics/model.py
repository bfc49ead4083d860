"""Built-in prediction (model-level) metrics, one model at a time, from tables only (no pixels).

``t.predictions`` holds one model's predictions with their COCO match (``status``, ``gt_id``);
acquisition functions (``index="image"``) aggregate each image's predictions by their mean.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from qm_dagster import geometry
from qm_dagster.metrics import label  # noqa: F401  (registers the label metrics reused here)
from qm_dagster.metrics.registry import get as label_spec
from qm_dagster.metrics.registry import metric, register
from qm_dagster.metrics.sequence import shape_similarities, track_order
from qm_dagster.metrics.tables import Tables


@metric("prediction", "The prediction's score", reads="table", value_range=(0, 1))
def confidence(t: Tables) -> np.ndarray:
    return t.predictions.score.to_numpy(dtype=float)


def best_iou(t: Tables, same_class: bool) -> np.ndarray:
    """Per prediction, the best COCO IoU (crowd rule included) with a ground truth of the same
    class (``same_class``) or of another class."""
    if t.annotations.empty:
        return np.full(len(t.predictions), np.nan)
    pred, gt, ious = t.prediction_pairs
    same = t.predictions.category_id.to_numpy()[pred] == t.annotations.category_id.to_numpy()[gt]
    keep = same if same_class else ~same
    out = np.zeros(len(t.predictions))
    np.maximum.at(out, pred[keep], ious[keep])
    return out


@metric(
    "prediction",
    "Best IoU with a ground-truth object of the same class",
    reads="table",
    value_range=(0, 1),
)
def iou(t: Tables) -> np.ndarray:
    return best_iou(t, same_class=True)


@metric(
    "prediction",
    "Best mask IoU with a ground-truth object of the same class (its box where it has no "
    "mask; COCO's crowd rule); NaN for a prediction without a mask",
    reads="table",
    value_range=(0, 1),
)
def mask_iou(t: Tables) -> np.ndarray:
    preds = t.predictions.reset_index(drop=True)
    out = np.full(len(preds), np.nan)
    masked = preds.segmentation.notna().to_numpy()
    if t.annotations.empty or not masked.any():
        return out
    pred, gt, _ = t.prediction_pairs
    same = preds.category_id.to_numpy()[pred] == t.annotations.category_id.to_numpy()[gt]
    keep = same & masked[pred]
    pred, gt = pred[keep], gt[keep]
    out[masked] = 0.0
    if not len(pred):
        return out
    found = Tables(t.images, preds).rles  # the predictions' masks at image size
    crowd = t.annotations.iscrowd.to_numpy() != 0
    for rows in (
        pd.Series(np.arange(len(pred))).groupby(preds.image_id.to_numpy()[pred]).indices.values()
    ):
        ps, gs = np.unique(pred[rows]), np.unique(gt[rows])
        matrix = np.asarray(
            mask_utils.iou(
                [found[i] for i in ps], [t.rles[j] for j in gs], crowd[gs].astype(np.uint8).tolist()
            )
        )
        values = matrix[np.searchsorted(ps, pred[rows]), np.searchsorted(gs, gt[rows])]
        np.maximum.at(out, pred[rows], values)
    return out


@metric(
    "prediction",
    "1 = true positive under COCO matching at IoU 0.5 (maxDets 100), "
    "0 = false positive; NaN = matched a crowd region or beyond maxDets",
    reads="table",
    value_range=(0, 1),
)
def match(t: Tables) -> np.ndarray:
    return t.predictions.status.map({"tp": 1.0, "fp": 0.0}).to_numpy(dtype=float)


@metric(
    "prediction",
    "1 = a false positive overlapping (IoU >= 0.5) a ground truth of another class",
    reads="table",
    value_range=(0, 1),
)
def class_confusion(t: Tables) -> np.ndarray:
    if t.annotations.empty:
        return np.full(len(t.predictions), np.nan)
    other = best_iou(t, same_class=False)
    return ((t.predictions.status.to_numpy() == "fp") & (other >= 0.5)).astype(float)


@metric(
    "prediction",
    "Ground-truth objects of the image the model missed (COCO, IoU 0.5)",
    reads="table",
    index="image",
    value_range=(0, None),
)
def missed(t: Tables) -> np.ndarray:
    missing = t.annotations[~t.extra["gt_found"] & ~t.extra["gt_ignored"]]
    counts = missing.image_id.value_counts()
    return t.images.image_id.map(counts).fillna(0).to_numpy(dtype=float)


def probabilities(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction's class-probability vector as a row of a zero-padded matrix, with the
    vector's length: ``scores`` when given (normalised), else the binary distribution
    [score, 1 - score]. The JSON of every ``scores`` is parsed in one call, not one per row."""
    scores = predictions.scores.to_numpy(dtype=object)
    given = np.array([isinstance(v, str) and v != "" for v in scores], dtype=bool)
    lists = json.loads("[" + ",".join(scores[given]) + "]") if given.any() else []
    lengths = np.full(len(scores), 2)
    lengths[given] = [len(v) for v in lists]
    matrix = np.zeros((len(scores), max(int(lengths.max(initial=0)), 2)))
    score = predictions.score.to_numpy(dtype=float)[~given]
    matrix[~given, 0], matrix[~given, 1] = score, 1 - score
    rows = np.flatnonzero(given)
    if rows.size:
        counts = lengths[rows]
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        columns = np.arange(counts.sum()) - starts
        matrix[np.repeat(rows, counts), columns] = np.fromiter(
            itertools.chain.from_iterable(lists), float, counts.sum()
        )
    total = matrix.sum(axis=1, keepdims=True)
    np.divide(matrix, total, out=matrix, where=total > 0)
    return matrix, lengths


def _per_image(t: Tables, per_prediction: np.ndarray) -> np.ndarray:
    means = (
        pd.Series(per_prediction, index=t.predictions.index).groupby(t.predictions.image_id).mean()
    )
    return t.images.image_id.map(means).to_numpy(dtype=float)


def distribution_entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row; zero entries (and the padding) add nothing."""
    terms = np.zeros_like(p)
    np.multiply(p, np.log2(p, where=p > 0, out=np.ones_like(p)), out=terms, where=p > 0)
    return -terms.sum(axis=1)


def top_margin(p: np.ndarray) -> np.ndarray:
    """Top probability minus the second (0 for a one-class vector: the padding)."""
    top = np.sort(p, axis=1)
    return top[:, -1] - top[:, -2]


def _variance(p: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``np.var`` of each row's first ``lengths`` entries."""
    inside = np.arange(p.shape[1])[None, :] < lengths[:, None]
    mean = p.sum(axis=1) / lengths
    return np.square(np.where(inside, p - mean[:, None], 0.0)).sum(axis=1) / lengths


@metric(
    "prediction",
    "Mean Shannon entropy (bits) of the image's prediction distributions",
    reads="table",
    index="image",
    value_range=(0, None),
    unit="bits",
)
def entropy(t: Tables) -> np.ndarray:
    return _per_image(t, distribution_entropy(probabilities(t.predictions)[0]))


@metric(
    "prediction",
    "Mean of 1 - max class probability over the image's predictions",
    reads="table",
    index="image",
    value_range=(0, 1),
)
def least_confidence(t: Tables) -> np.ndarray:
    return _per_image(t, 1 - probabilities(t.predictions)[0].max(axis=1))


@metric(
    "prediction",
    "Mean gap between the two most likely classes (small = uncertain)",
    reads="table",
    index="image",
    value_range=(0, 1),
)
def margin(t: Tables) -> np.ndarray:
    return _per_image(t, top_margin(probabilities(t.predictions)[0]))


@metric(
    "prediction",
    "Mean variance of the image's prediction distributions",
    reads="table",
    index="image",
    value_range=(0, None),
)
def variance(t: Tables) -> np.ndarray:
    return _per_image(t, _variance(*probabilities(t.predictions)))


@metric(
    "prediction",
    "Mean score of the image's predictions",
    reads="table",
    index="image",
    value_range=(0, 1),
)
def mean_confidence(t: Tables) -> np.ndarray:
    return _per_image(t, t.predictions.score.to_numpy(dtype=float))


SEQUENCE_MATCH_IOU = 0.5  # an untracked prediction continues the previous frame's at this IoU


@metric(
    "prediction",
    "Hu-moment similarity of the predicted mask (its box without one) with the same object in "
    "the previous frame: its track's previous appearance, else the same-class prediction of the "
    "previous frame it overlaps most (IoU >= 0.5); 1 / (1 + matchShapes I1), 1 = same shape",
    reads="table",
    value_range=(0, 1),
)
def shape_similarity(t: Tables) -> np.ndarray:
    preds = t.predictions.reset_index(drop=True)
    if not {"video_id", "frame_index"} <= set(t.images.columns):  # no sequences at all
        return np.full(len(preds), np.nan)
    prev = np.full(len(preds), -1)
    if "track_id" in preds:
        tracked = track_order(t, preds)
        prev[tracked.row.to_numpy()] = tracked.prev.to_numpy()
        untracked = np.flatnonzero(preds.track_id.isna().to_numpy())
    else:
        untracked = np.arange(len(preds))
    prev[untracked] = previous_frame_match(t.images, preds, untracked)
    rows = np.flatnonzero(prev >= 0)
    out = np.full(len(preds), np.nan)
    if len(rows):
        objects = Tables(t.images, preds)  # the predictions as objects: their masks and sizes
        out[rows] = shape_similarities(objects, prev[rows], rows)
    return out


def previous_frame_match(
    images: pd.DataFrame, objects: pd.DataFrame, rows: np.ndarray
) -> np.ndarray:
    """For each of ``rows`` (positions in ``objects``): the object of the same class on the
    previous frame of its video with the highest box IoU, at least SEQUENCE_MATCH_IOU (the
    first on ties), else -1."""
    out = np.full(len(rows), -1)
    frames = images[["image_id", "video_id", "frame_index"]].dropna()
    if frames.empty or not len(rows):
        return out
    frames = frames.sort_values(["video_id", "frame_index"], kind="stable")
    previous = frames.groupby("video_id", sort=False).image_id.shift(1)
    prev_image = pd.Series(previous.to_numpy(), index=frames.image_id.to_numpy())
    left = pd.DataFrame(
        {
            "image_id": prev_image.reindex(objects.image_id.to_numpy()[rows]).to_numpy(),
            "category_id": objects.category_id.to_numpy()[rows],
            "i": np.arange(len(rows)),
        }
    ).dropna(subset=["image_id"])
    right = pd.DataFrame(
        {
            "image_id": objects.image_id.to_numpy(),
            "category_id": objects.category_id.to_numpy(),
            "j": np.arange(len(objects)),
        }
    )
    pairs = left.astype({"image_id": right.image_id.dtype}).merge(
        right, on=["image_id", "category_id"]
    )
    if pairs.empty:
        return out
    box = geometry.boxes(objects)
    pairs["iou"] = geometry.pair_iou(box[rows[pairs.i.to_numpy()]], box[pairs.j.to_numpy()])
    pairs = pairs[pairs.iou >= SEQUENCE_MATCH_IOU].sort_values(
        ["i", "iou", "j"], ascending=[True, False, True]
    )
    best = pairs.drop_duplicates("i")
    out[best.i.to_numpy()] = best.j.to_numpy()
    return out


# Label metrics that make sense for a predicted object, as model/<name>: computed by the label
# metric's own function on the model's predictions taken as the objects of a table.
PREDICTED_OBJECT_METRICS = {
    "object_area": "Predicted object area in pixels: its mask's, else box w * h (COCO's loadRes)",
    "relative_area": "Predicted object area / image area",
    "object_aspect_ratio": "Predicted box width / box height",
    "border_proximity": "max(x2/W, y2/H, 1-x1/W, 1-y1/H) of the predicted box: 1 = at a border",
    "overlap": "Max IoU with another confident prediction of the model in the image",
    "annotation_duplicate": "Max IoU with another confident prediction of the same class in "
    "the image (a duplicate the NMS left)",
}
# Overlaps among a model's predictions are compared within an image for its confident
# predictions only (score >= PAIRED_MIN_SCORE, the PAIRED_MAX highest): a detector's 100
# low-score boxes per image would make the pairs quadratic. The others are NaN.
PAIRED = ("overlap", "annotation_duplicate")
PAIRED_MIN_SCORE = 0.5
PAIRED_MAX = 20


def predicted_objects(t: Tables) -> tuple[Tables, np.ndarray]:
    """The model's predictions as the objects of a table (area w * h for a box, as COCO's
    ``loadRes``, a mask's own; no crowd), and the positions of its confident ones
    (``PAIRED_MIN_SCORE``, at most ``PAIRED_MAX`` an image)."""
    preds = t.predictions.reset_index(drop=True)
    boxed = preds.segmentation.isna().to_numpy()
    area = np.where(boxed, preds.bbox_w.to_numpy(float) * preds.bbox_h.to_numpy(float), np.nan)
    preds = preds.assign(area=area, iscrowd=0)
    rank = preds.groupby("image_id").score.rank(method="first", ascending=False)
    confident = np.flatnonzero((preds.score >= PAIRED_MIN_SCORE) & (rank <= PAIRED_MAX))
    return Tables(t.images, preds), confident


def _on_predictions(name: str, label_fn):
    def fn(t: Tables) -> np.ndarray:
        objects, confident = predicted_objects(t)
        if name not in PAIRED:
            return np.asarray(label_fn(objects), dtype=float)
        out = np.full(len(objects.annotations), np.nan)
        subset = objects.annotations.iloc[confident].reset_index(drop=True)
        out[confident] = label_fn(Tables(t.images, subset))
        return out

    fn.__name__ = fn.__qualname__ = f"predicted_{name}"
    return fn


def _register_predicted_object_metrics() -> None:
    for name, description in PREDICTED_OBJECT_METRICS.items():
        spec = label_spec(f"label/{name}")
        fn = _on_predictions(name, spec.fn)
        register(
            replace(spec, level="prediction", index="prediction", fn=fn, description=description)
        )


_register_predicted_object_metrics()
