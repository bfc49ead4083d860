"""Annotator performance (Encord Active's "assessing annotator performance"): per annotator of
a version, how many objects and images they labelled, the mean of every label metric over
their objects, and three shares that point at sloppy work:

- ``duplicate_share``: objects overlapping another object of the same class in the image at
  IoU >= ``DUPLICATE_IOU`` (``label/annotation_duplicate``), i.e. labelled twice;
- ``label_error_share``: objects in the label-error queue (``analysis/label_errors``: wrong
  class, badly located, spurious, neighbours voting for another class);
- ``found@<model>``: non-crowd objects a confident prediction of the model matches (COCO's
  matching at IoU 0.5, score >= the configured threshold, from ``model/matching``).

Objects without an annotator are left out; a version without any gives an empty table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DUPLICATE_IOU = 0.8
DUPLICATE_METRIC = "label/annotation_duplicate"
BASE = ["annotator", "objects", "images", "duplicate_share", "label_error_share"]


def annotator_table(
    annotations: pd.DataFrame,
    object_table: pd.DataFrame,
    label_errors: pd.DataFrame,
    matches: pd.DataFrame,
    score: float = 0.5,
) -> pd.DataFrame:
    """One row per annotator (``BASE`` columns, ``found@<model>`` per model, then the mean of
    each ``label/*`` column of ``object_table``), sorted by annotator."""
    labelled = annotations[annotations.annotator.notna()]
    if labelled.empty:
        return pd.DataFrame(columns=BASE)
    metrics = [c for c in object_table.columns if c.startswith("label/") and ":" not in c]
    objects = labelled[["annotation_id", "image_id", "annotator", "iscrowd"]].merge(
        object_table[["annotation_id", *metrics]], on="annotation_id", how="left"
    )
    flagged = label_errors.annotation_id.dropna().to_numpy()
    objects["_error"] = objects.annotation_id.isin(flagged)
    duplicate = objects.get(DUPLICATE_METRIC, pd.Series(np.nan, index=objects.index))
    objects["_duplicate"] = duplicate >= DUPLICATE_IOU
    found = _found(objects, matches, score)
    by = objects.groupby("annotator", sort=True)
    table = pd.DataFrame(
        {
            "objects": by.size(),
            "images": by.image_id.nunique(),
            "duplicate_share": by._duplicate.mean(),
            "label_error_share": by._error.mean(),
        }
    )
    for model, hit in found.items():
        regular = objects.iscrowd.to_numpy() == 0
        table[f"found@{model}"] = (
            pd.Series(hit[regular]).groupby(objects.annotator.to_numpy()[regular]).mean()
        )
    table = table.join(by[metrics].mean()) if metrics else table
    return table.rename_axis("annotator").reset_index()


def _found(objects: pd.DataFrame, matches: pd.DataFrame, score: float) -> dict[str, np.ndarray]:
    """Per model: whether each object is matched by a confident prediction (status tp)."""
    out = {}
    for model, rows in matches.groupby("model", sort=True):
        hit = rows[(rows.status == "tp") & (rows.score >= score)].gt_id
        out[str(model)] = objects.annotation_id.isin(hit.dropna().to_numpy()).to_numpy()
    return out
