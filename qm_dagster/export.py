"""Write a slice of a version as a new version (e.g. the images an acquisition function ranks
highest: "what should I label next"), in the same layout, ``version.json`` last."""

from __future__ import annotations

import json

import pandas as pd

from qm_dagster import storage
from qm_dagster.coco import load_json
from qm_dagster.dataset import Version
from qm_dagster.layout import VersionWriter
from qm_dagster.slices import Slice


def export_slice(
    version: Version, rows: pd.DataFrame, s: Slice, root: str, name: str, overwrite: bool = False
) -> Version:
    """``rows``: the slice's rows of its quality table. Image slices keep every object of their
    images; object slices keep only the selected objects (and their images)."""
    writer = VersionWriter(root, name, overwrite=overwrite)
    keep_images = set(rows.image_id.tolist())
    meta = version.meta()
    coco = None
    if version.has_annotations():
        coco = load_json(storage.read_bytes(version.annotations_url), version.annotations_url)
        images = [i for i in coco["images"] if i["id"] in keep_images]
        names = [i["file_name"] for i in images]
        anns = [a for a in coco.get("annotations", []) if a["image_id"] in keep_images]
        if s.level == "object":
            keep_ann = set(rows.annotation_id.tolist())
            anns = [a for a in anns if a["id"] in keep_ann]
        coco = {**coco, "images": images, "annotations": anns}
    else:
        names = sorted(str(i) for i in keep_images)
    for file_name in names:
        url = storage.join(version.images_url, file_name)
        if storage.exists(url):
            writer.add_image(file_name, storage.read_bytes(url))
    if coco is not None:
        writer.write_annotations(coco)
        for model, url in version.prediction_files().items():
            results = load_json(storage.read_bytes(url), url)
            writer.write_predictions(model, [r for r in results if r["image_id"] in keep_images])
    return writer.commit(
        kind=meta.kind,
        reference=meta.reference,
        description=f"slice {s.name!r} ({s.where}) of {version.name}: "
        f"{json.dumps(len(names))} images",
    )
