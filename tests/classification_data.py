"""A classification dataset made from ../shared/data: the object crops of coco-val2014-fake100
in one folder per class, a simulated classifier's class probabilities, and planted label flips."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

CLASSES = ["person", "chair", "spoon", "bowl", "bird", "cup"]
MIN_SIDE = 12  # crops smaller than this are left out
PER_CLASS = 80  # at most this many crops of a class (person dominates COCO)


@dataclass(frozen=True)
class Crops:
    images: Path  # <class>/<annotation id>.jpg, the class being the given (maybe flipped) label
    probabilities: Path  # CSV: file_name and a column per class
    truth: dict[str, str]  # file name -> the object's real class
    given: dict[str, str]  # file name -> its label in the dataset
    flipped: frozenset[str]  # the files whose label was changed


def _objects(source: Path) -> list[tuple[dict, str]]:
    """The annotations kept (their image shipped, not crowd, large enough), with class names."""
    coco = json.loads((source / "instances_val2014_100.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    present = {i["id"] for i in coco["images"] if (source / "images" / i["file_name"]).is_file()}
    counts = dict.fromkeys(CLASSES, 0)
    out = []
    for ann in coco["annotations"]:
        name = names[ann["category_id"]]
        w, h = ann["bbox"][2:]
        kept = name in counts and ann["image_id"] in present and not ann["iscrowd"]
        if kept and min(w, h) >= MIN_SIDE and counts[name] < PER_CLASS:
            counts[name] += 1
            out.append((ann, name))
    return out


def build(source: Path, out: Path, flip_share: float = 0.1, seed: int = 0) -> Crops:
    """Crop every kept object of ``source`` (coco-val2014-fake100) into ``out``; the simulated
    classifier is surer of larger objects (its logit of the real class grows with the crop's
    side), and a ``flip_share`` of the labels is moved to another class."""
    rng = np.random.default_rng(seed)
    coco = json.loads((source / "instances_val2014_100.json").read_text())
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    objects = _objects(source)
    flip = rng.random(len(objects)) < flip_share
    truth, given, rows, flipped = {}, {}, [], set()
    images: dict[int, np.ndarray] = {}
    for (ann, name), flipped_here in zip(objects, flip, strict=True):
        image_id = ann["image_id"]
        if image_id not in images:
            images[image_id] = cv2.imread(str(source / "images" / files[image_id]))
        x, y, w, h = (round(v) for v in ann["bbox"])
        crop = images[image_id][y : y + h, x : x + w]
        label = name
        if flipped_here:
            label = str(rng.choice([c for c in CLASSES if c != name]))
        rel = f"{label}/{ann['id']}.jpg"
        (out / "images" / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / "images" / rel), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
        truth[rel], given[rel] = name, label
        if flipped_here:
            flipped.add(rel)
        logits = rng.normal(0.0, 1.0, len(CLASSES))
        logits[CLASSES.index(name)] += 1.0 + 3.0 * min(1.0, np.sqrt(w * h) / 150.0)
        p = np.exp(1.5 * logits)
        rows.append([rel, *(p / p.sum())])
    probabilities = out / "probabilities.csv"
    pd.DataFrame(rows, columns=["file_name", *CLASSES]).to_csv(probabilities, index=False)
    return Crops(out / "images", probabilities, truth, given, frozenset(flipped))
