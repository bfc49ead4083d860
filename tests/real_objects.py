"""The real COCO objects of ../shared/data/coco-val2014-fake100 as a small object table, with
values computed here from the annotations and the pixels (independent of the metric engine)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd

from tests.conftest import shared


def coco_objects(darken: set[int] = frozenset()) -> pd.DataFrame:
    """The real COCO objects of ../shared/data (non-crowd boxes of the 54 photos present):
    box geometry and the mean gray level inside the box, from the pixels (``darken``: those
    images' pixels scaled by 0.6 first)."""
    src = shared("coco-val2014-fake100")
    coco = json.loads((src / "instances_val2014_100.json").read_text())
    present = {p.name for p in (src / "images").iterdir()}
    images = {i["id"]: i for i in coco["images"] if i["file_name"] in present}
    gray = {}
    for image_id, image in images.items():
        pixels = cv2.imread(str(src / "images" / image["file_name"]), cv2.IMREAD_GRAYSCALE)
        gray[image_id] = pixels * 0.6 if image_id in darken else pixels.astype(float)
    rows = []
    for a in coco["annotations"]:
        if a["image_id"] not in images or a["iscrowd"]:
            continue
        x, y, w, h = a["bbox"]
        image = images[a["image_id"]]
        box = gray[a["image_id"]][
            int(y) : int(np.ceil(y + h)) + 1, int(x) : int(np.ceil(x + w)) + 1
        ]
        rows.append(
            {
                "annotation_id": a["id"],
                "image_id": a["image_id"],
                "category": a["category_id"],
                "label/object_area": a["area"],
                "label/relative_area": a["area"] / (image["width"] * image["height"]),
                "label/object_aspect_ratio": w / h,
                "label/object_brightness": box.mean() / 255,
            }
        )
    return pd.DataFrame(rows)
