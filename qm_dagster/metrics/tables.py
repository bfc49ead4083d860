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
        """Each annotation's RLE at image size (mask, else box); None where the size is unknown."""
        w, h = self.sizes_of(self.annotations)
        out = []
        for seg, box, wi, hi in zip(
            self.annotations.segmentation, geometry.boxes(self.annotations), w, h, strict=True
        ):
            out.append(None if np.isnan(wi) else geometry.rle(seg, box, int(hi), int(wi)))
        return out

    @cached_property
    def has_mask(self) -> np.ndarray:
        return self.annotations.segmentation.notna().to_numpy()

    def groups(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """Row positions of ``frame`` grouped by image."""
        return [np.asarray(g) for g in frame.groupby("image_id", sort=False).indices.values()]
