"""A ranked review queue of likely label mistakes, from disagreement between a model and the labels.

Only confident predictions (score >= ``MIN_SCORE``) count; IoUs are COCO's box IoUs.
- ``missing``: a prediction that matches no object (IoU < 0.5 with every object) — an unlabelled
  object; score = prediction score x (1 - its best IoU with any object).
- ``wrong_class``: a prediction on an object of another class (IoU >= 0.5) with no same-class
  object there; score = prediction score x IoU.
- ``badly_located``: an object whose best same-class prediction overlaps it only partly
  (0.1 <= IoU < 0.7) and overlaps no other object more; score = prediction score x (1 - IoU).
  That prediction is then not also reported as ``missing``.
- ``spurious``: a non-crowd object no prediction overlaps (best IoU < 0.1) although the model
  finds most objects of its class elsewhere; score = half that class's recall (the share of its
  non-crowd objects that COCO's matching, ``model/matching``, gives a confident prediction; a
  missed object is as often the model's failure as the label's, so it weighs less).
- ``neighbour_disagreement`` (no model needed; ``model`` is empty): an object whose nearest
  objects in embedding space (``label/neighbour_agreement``) carry one other class more often
  than its own; score = that class's share minus its own class's share.

All of it is vectorised over the (prediction, object) pairs of the same image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qm_dagster import geometry

MIN_SCORE = 0.5
COLUMNS = [
    "kind",
    "score",
    "model",
    "image_id",
    "annotation_id",
    "prediction_id",
    "category",
    "predicted_category",
    "iou",
    "evidence",
]


def label_errors(
    annotations: pd.DataFrame,
    predictions: pd.DataFrame,
    matches: pd.DataFrame,
    agreement: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Candidates of every model and of the embeddings, highest score first; ``matches``
    (``model/matching``) gives the class recalls that weigh spurious objects; ``agreement``
    (``label/neighbour_agreement``) the neighbours' votes."""
    ann = annotations.reset_index(drop=True)
    frames = [] if agreement is None else [_neighbour_disagreement(ann, agreement)]
    for model, preds in predictions.groupby("model", sort=True):
        confident = preds[preds.score >= MIN_SCORE].reset_index(drop=True)
        found = matches[(matches.model == model) & (matches.score >= MIN_SCORE)]
        frames.append(_model_errors(str(model), ann, confident, found))
    # each kind leaves some columns empty (no prediction, no IoU): joined without them
    frames = [f.dropna(axis=1, how="all") for f in frames if not f.empty]
    frame = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS) if frames else None
    frame = pd.DataFrame(columns=COLUMNS) if frame is None else frame
    located = frame[frame.kind == "badly_located"][["model", "prediction_id"]]
    explained = frame.set_index(["model", "prediction_id"]).index.isin(
        located.set_index(["model", "prediction_id"]).index
    )
    frame = frame[~((frame.kind == "missing").to_numpy() & explained)]
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


class _Pairs:
    """Every (prediction, object) pair of the same image with its box IoU, as flat arrays
    (a join on image_id, no loop per image); ``p`` and ``g`` are row positions."""

    def __init__(self, ann: pd.DataFrame, preds: pd.DataFrame):
        self.p, self.g = geometry.same_image_pairs(preds.image_id, ann.image_id)
        pb, gb = geometry.boxes(preds), geometry.boxes(ann)
        self.iou = geometry.pair_iou(pb[self.p], gb[self.g])
        self.same = preds.category_id.to_numpy()[self.p] == ann.category_id.to_numpy()[self.g]

    def best(self, by: np.ndarray, other: np.ndarray, values: np.ndarray, n: int):
        """Per row ``0..n-1`` of ``by``: the largest of ``values`` (0 without pairs) and the
        ``other`` position where it is reached first (-1 without pairs), like ``argmax``."""
        top, where = np.zeros(n), np.full(n, -1)
        order = np.lexsort((other, -values, by))
        first = order[np.r_[True, by[order][1:] != by[order][:-1]]] if len(order) else order
        top[by[first]], where[by[first]] = values[first], other[first]
        return top, where


def _model_errors(
    model: str, ann: pd.DataFrame, preds: pd.DataFrame, found: pd.DataFrame
) -> pd.DataFrame:
    pairs = _Pairs(ann, preds)
    n_p, n_g = len(preds), len(ann)
    best_any = np.zeros(n_g)  # best IoU of any confident prediction, per object
    np.maximum.at(best_any, pairs.g, pairs.iou)
    same_iou = np.where(pairs.same, pairs.iou, 0.0)
    other_iou = np.where(pairs.same, 0.0, pairs.iou)
    best, _ = pairs.best(pairs.p, pairs.g, pairs.iou, n_p)
    best_same, _ = pairs.best(pairs.p, pairs.g, same_iou, n_p)
    best_other, other_at = pairs.best(pairs.p, pairs.g, other_iou, n_p)
    missing = best < 0.5
    wrong = ~missing & (best_other >= 0.5) & (best_same < 0.5)
    # an object's best same-class prediction, and that prediction's best same-class object
    obj_best, obj_pred = pairs.best(pairs.g, pairs.p, same_iou, n_g)
    _, pred_obj = pairs.best(pairs.p, pairs.g, same_iou, n_p)
    located = (obj_best >= 0.1) & (obj_best < 0.7)
    located &= pred_obj[np.where(obj_pred >= 0, obj_pred, 0)] == np.arange(n_g)
    crowd = ann.iscrowd.to_numpy() != 0
    spurious = (best_any < 0.1) & ~crowd
    recall = _class_recall(ann, found, crowd)
    return pd.concat(
        [
            _missing(model, preds, np.flatnonzero(missing), best),
            _wrong_class(model, ann, preds, np.flatnonzero(wrong), other_at, best_other),
            _badly_located(model, ann, preds, np.flatnonzero(located), obj_pred, obj_best),
            _spurious(model, ann, np.flatnonzero(spurious), best_any, recall),
        ],
        ignore_index=True,
    )[COLUMNS]


def _class_recall(ann: pd.DataFrame, found: pd.DataFrame, crowd: np.ndarray) -> pd.Series:
    """Per class: the share of its non-crowd objects that a confident prediction matched
    (COCO's matching, from model/matching)."""
    hit = np.isin(ann.annotation_id.to_numpy(), found.gt_id[found.status == "tp"].to_numpy())
    return pd.Series(hit[~crowd]).groupby(ann.category.to_numpy()[~crowd]).mean()


def _rows(model: str, kind: str, score: np.ndarray, **columns) -> pd.DataFrame:
    return pd.DataFrame({"kind": kind, "score": score, "model": model, **columns}, columns=COLUMNS)


def _missing(model, preds, j, best) -> pd.DataFrame:
    p = preds.iloc[j]
    evidence = [
        f"{c} ({s:.2f}) on no labelled object" for c, s in zip(p.category, p.score, strict=True)
    ]
    return _rows(
        model,
        "missing",
        p.score.to_numpy() * (1 - best[j]),
        image_id=p.image_id.to_numpy(),
        prediction_id=p.prediction_id.to_numpy(),
        predicted_category=p.category.to_numpy(),
        iou=best[j],
        evidence=evidence,
    )


def _wrong_class(model, ann, preds, j, other_at, best_other) -> pd.DataFrame:
    p, g, iou = preds.iloc[j], ann.iloc[other_at[j]], best_other[j]
    evidence = [
        f"labelled {label}, the model says {c} ({s:.2f}, IoU {v:.2f})"
        for label, c, s, v in zip(g.category, p.category, p.score, iou, strict=True)
    ]
    return _pair_rows(model, "wrong_class", g, p, iou, p.score.to_numpy() * iou, evidence)


def _badly_located(model, ann, preds, i, obj_pred, obj_best) -> pd.DataFrame:
    g, p, iou = ann.iloc[i], preds.iloc[obj_pred[i]], obj_best[i]
    evidence = [
        f"the model's {c} ({s:.2f}) overlaps this box only at IoU {v:.2f}"
        for c, s, v in zip(p.category, p.score, iou, strict=True)
    ]
    return _pair_rows(model, "badly_located", g, p, iou, p.score.to_numpy() * (1 - iou), evidence)


def _pair_rows(model, kind, g, p, iou, score, evidence) -> pd.DataFrame:
    """Rows naming an object ``g`` and a prediction ``p`` (aligned frames)."""
    return _rows(
        model,
        kind,
        score,
        image_id=g.image_id.to_numpy(),
        annotation_id=g.annotation_id.to_numpy(),
        prediction_id=p.prediction_id.to_numpy(),
        category=g.category.to_numpy(),
        predicted_category=p.category.to_numpy(),
        iou=iou,
        evidence=evidence,
    )


def _spurious(model, ann, i, best_any, recall) -> pd.DataFrame:
    g = ann.iloc[i]
    share = g.category.map(recall).fillna(0.0).to_numpy(float)
    evidence = [
        f"no prediction on this {c}; the model finds {r:.0%} of {c} elsewhere"
        for c, r in zip(g.category, share, strict=True)
    ]
    return _rows(
        model,
        "spurious",
        0.5 * share,
        image_id=g.image_id.to_numpy(),
        annotation_id=g.annotation_id.to_numpy(),
        category=g.category.to_numpy(),
        iou=best_any[i],
        evidence=evidence,
    )


def _neighbour_disagreement(ann: pd.DataFrame, agreement: pd.DataFrame) -> pd.DataFrame:
    """Objects whose neighbours vote for another class more than for their own."""
    votes = agreement.set_index("annotation_id").reindex(ann.annotation_id)
    own, other = votes.value.to_numpy(float), votes.other_share.to_numpy(float)
    hit = np.flatnonzero(other > np.nan_to_num(own, nan=np.inf))
    g, v = ann.iloc[hit], votes.iloc[hit]
    classes = ann[["category_id", "category"]].drop_duplicates("category_id")
    names = dict(zip(classes.category_id, classes.category, strict=True))  # one per class
    voted = [names.get(c, str(c)) for c in v.other_class.to_numpy()]
    evidence = [
        f"{o:.0%} of its nearest objects are {c}, {a:.0%} {label}"
        for o, c, a, label in zip(other[hit], voted, own[hit], g.category, strict=True)
    ]
    return _rows(
        "",
        "neighbour_disagreement",
        other[hit] - own[hit],
        image_id=g.image_id.to_numpy(),
        annotation_id=g.annotation_id.to_numpy(),
        category=g.category.to_numpy(),
        predicted_category=voted,
        evidence=evidence,
    )
