"""The version's tables as table-level metrics see them, with masks and sizes computed once."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from qm_dagster import geometry


@dataclass
class Tables:
    """Manifest, annotations and (for model metrics) predictions of one version.

    Row order is the contract: a table metric returns one value per row of the table its index
    names (``images``, ``annotations`` or ``predictions``).
    """

    images: pd.DataFrame
    annotations: pd.DataFrame
    predictions: pd.DataFrame | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @cached_property
    def image_size(self) -> pd.DataFrame:
        """Width and height per image id: the file's header, else what annotations.json says."""
        w = self.images.width.astype("Float64").fillna(self.images.coco_width.astype("Float64"))
        h = self.images.height.astype("Float64").fillna(self.images.coco_height.astype("Float64"))
        return pd.DataFrame(
            {"width": w.to_numpy(float), "height": h.to_numpy(float)}, index=self.images.image_id
        )

    def sizes_of(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Image width and height for every row of ``frame`` (by its ``image_id``)."""
        sizes = self.image_size.reindex(frame.image_id)
        return sizes.width.to_numpy(float), sizes.height.to_numpy(float)

    @cached_property
    def rles(self) -> list[dict | None]:
        """Each annotation's RLE at image size (mask, else box); None where the size is unknown.
        Boxes are encoded in one pycocotools call per image size, not one per object."""
        w, h = self.sizes_of(self.annotations)
        segmentation = self.annotations.segmentation.to_numpy()
        box = geometry.boxes(self.annotations)
        out: list[dict | None] = [None] * len(segmentation)
        known = ~np.isnan(w)
        masked = known & pd.notna(segmentation)
        for i in np.flatnonzero(masked):
            out[i] = geometry.rle(segmentation[i], box[i], int(h[i]), int(w[i]))
        boxed = np.flatnonzero(known & ~masked)
        sizes = pd.DataFrame({"w": w[boxed], "h": h[boxed]})
        for (wi, hi), rows in sizes.groupby(["w", "h"], sort=False).indices.items():
            for i, encoded in zip(
                boxed[rows], geometry.box_rles(box[boxed[rows]], int(hi), int(wi)), strict=True
            ):
                out[i] = encoded
        return out

    @cached_property
    def has_mask(self) -> np.ndarray:
        return self.annotations.segmentation.notna().to_numpy()

    @cached_property
    def image_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every ordered pair (i, j), i != j, of annotations of the same image and their IoU:
        mask IoU where both have a mask (the image's masks all at a known size), box IoU
        otherwise (pycocotools' arithmetic, no crowd rule). A join on image_id, no loop over
        images except for the mask IoUs."""
        ann = self.annotations
        first, second = geometry.same_image_pairs(ann.image_id, ann.image_id)
        other = first != second
        first, second = first[other], second[other]
        boxes = geometry.boxes(ann)
        ious = geometry.pair_iou(boxes[first], boxes[second])
        self._mask_ious(first, second, ious)
        return first, second, ious

    @cached_property
    def prediction_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (prediction, ground truth) pair of the same image and their COCO box IoU (crowd
        rule included), as row positions: a join on image_id, no loop over images."""
        preds, ann = self.predictions, self.annotations
        pred, gt = geometry.same_image_pairs(preds.image_id, ann.image_id)
        crowd = ann.iscrowd.to_numpy()[gt] != 0
        ious = geometry.pair_iou(geometry.boxes(preds)[pred], geometry.boxes(ann)[gt], crowd)
        return pred, gt, ious

    def _mask_ious(self, first: np.ndarray, second: np.ndarray, ious: np.ndarray) -> None:
        """Overwrite, in ``ious``, the pairs whose two annotations have masks."""
        masked = np.flatnonzero(self.has_mask)
        if len(masked) < 2:
            return
        key = first.astype(np.int64) * len(self.annotations) + second
        by_image = pd.Series(masked).groupby(self.annotations.image_id.to_numpy()[masked])
        for rows in by_image.indices.values():
            rows = masked[rows]
            if len(rows) < 2 or any(self.rles[i] is None for i in rows):
                continue
            m = geometry.mask_iou([self.rles[i] for i in rows])
            a, b = np.nonzero(~np.eye(len(rows), dtype=bool))
            where = np.searchsorted(key, rows[a].astype(np.int64) * len(self.annotations) + rows[b])
            ious[where] = m[a, b]

    def groups(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """Row positions of ``frame`` grouped by image."""
        return [np.asarray(g) for g in frame.groupby("image_id", sort=False).indices.values()]
