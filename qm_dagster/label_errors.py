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
  finds most objects of its class elsewhere; score = half that class's recall (a missed object is
  as often the model's failure as the label's, so it weighs less).
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


def label_errors(annotations: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Candidates of every model, highest score first."""
    rows: list[dict[str, object]] = []
    for model, preds in predictions.groupby("model", sort=True):
        confident = preds[preds.score >= MIN_SCORE].reset_index(drop=True)
        rows += _model_errors(str(model), annotations.reset_index(drop=True), confident)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    located = frame[frame.kind == "badly_located"][["model", "prediction_id"]]
    explained = frame.set_index(["model", "prediction_id"]).index.isin(
        located.set_index(["model", "prediction_id"]).index
    )
    frame = frame[~((frame.kind == "missing").to_numpy() & explained)]
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _model_errors(model: str, ann: pd.DataFrame, preds: pd.DataFrame) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    best_any = np.zeros(len(ann))  # best IoU of any prediction, per object
    found = np.zeros(len(ann), bool)  # matched by a same-class prediction at IoU >= 0.5
    pred_by_image = preds.groupby("image_id").indices
    ann_by_image = ann.groupby("image_id").indices  # one grouping, not a scan per image
    none = np.zeros(0, np.int64)
    for image_id, p_rows in pred_by_image.items():
        g_rows = ann_by_image.get(image_id, none)
        p, g = preds.iloc[p_rows], ann.iloc[g_rows]
        ious = geometry.box_iou(geometry.boxes(p), geometry.boxes(g))  # predictions x objects
        same = p.category_id.to_numpy()[:, None] == g.category_id.to_numpy()[None, :]
        if len(g_rows):
            best_any[g_rows] = np.maximum(best_any[g_rows], ious.max(axis=0))
            found[g_rows] |= ((ious >= 0.5) & same).any(axis=0)
        rows += _prediction_errors(model, image_id, p, g, ious, same)
        rows += _located(model, image_id, p, g, np.where(same, ious, 0.0).T)
    recall = pd.Series(found).groupby(ann.category.to_numpy()).mean()
    for i in np.flatnonzero((best_any < 0.1) & (ann.iscrowd.to_numpy() == 0)):
        a = ann.iloc[i]
        share = float(recall.get(a.category, 0.0))
        rows.append(
            {
                "kind": "spurious",
                "score": 0.5 * share,
                "model": model,
                "image_id": a.image_id,
                "annotation_id": a.annotation_id,
                "category": a.category,
                "iou": best_any[i],
                "evidence": f"no prediction on this {a.category}; the model finds "
                f"{share:.0%} of {a.category} elsewhere",
            }
        )
    return rows


def _prediction_errors(model, image_id, p, g, ious, same) -> list[dict[str, object]]:
    rows = []
    for j, pred in enumerate(p.itertuples()):
        base = {
            "model": model,
            "image_id": image_id,
            "prediction_id": pred.prediction_id,
            "predicted_category": pred.category,
        }
        best = float(ious[j].max()) if ious.shape[1] else 0.0
        if best < 0.5:
            rows.append(
                {
                    **base,
                    "kind": "missing",
                    "score": pred.score * (1 - best),
                    "iou": best,
                    "evidence": f"{pred.category} ({pred.score:.2f}) on no labelled object",
                }
            )
            continue
        other = np.where(~same[j], ious[j], 0.0)
        k = int(other.argmax())
        if other[k] >= 0.5 and np.where(same[j], ious[j], 0.0).max() < 0.5:
            label = g.category.iloc[k]
            rows.append(
                {
                    **base,
                    "kind": "wrong_class",
                    "score": pred.score * other[k],
                    "annotation_id": g.annotation_id.iloc[k],
                    "category": label,
                    "iou": other[k],
                    "evidence": f"labelled {label}, the model says "
                    f"{pred.category} ({pred.score:.2f}, IoU {other[k]:.2f})",
                }
            )
    return rows


def _located(model, image_id, p, g, ious) -> list[dict[str, object]]:
    """``ious``: objects x predictions, same class only."""
    rows = []
    for i in range(len(g)):
        if not ious.shape[1]:
            break
        j = int(ious[i].argmax())
        if 0.1 <= ious[i, j] < 0.7 and int(ious[:, j].argmax()) == i:
            pred = p.iloc[j]
            rows.append(
                {
                    "kind": "badly_located",
                    "score": pred.score * (1 - ious[i, j]),
                    "model": model,
                    "image_id": image_id,
                    "annotation_id": g.annotation_id.iloc[i],
                    "prediction_id": pred.prediction_id,
                    "category": g.category.iloc[i],
                    "predicted_category": pred.category,
                    "iou": ious[i, j],
                    "evidence": f"the model's {pred.category} ({pred.score:.2f}) overlaps "
                    f"this box only at IoU {ious[i, j]:.2f}",
                }
            )
    return rows
