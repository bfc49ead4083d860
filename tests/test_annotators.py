"""Annotator performance through Dagster: coco-val2014-fake100 with its images dealt to three
annotators, one of them sloppy (boxes and masks shifted by 40% of their width, 30% of classes
swapped). The sloppy one ranks worst on the columns that should catch it, and a check on every
annotator fails on them alone."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qm_dagster import storage
from qm_dagster.config import Settings
from tests.conftest import coco_fake_spec, materialize_version


def _deal(path, rng) -> None:
    """Give each image to ann, bob or sloppy in turn; spoil sloppy's objects."""
    doc = json.loads(path.read_text())
    images = sorted(i["id"] for i in doc["images"])
    who = {image: ("ann", "bob", "sloppy")[k % 3] for k, image in enumerate(images)}
    categories = [c["id"] for c in doc["categories"]]
    for a in doc["annotations"]:
        a["annotator"] = who[a["image_id"]]
        if a["annotator"] != "sloppy" or a["iscrowd"]:
            continue
        x, y, w, h = a["bbox"]
        dx = 0.4 * w
        a["bbox"] = [x + dx, y, w, h]
        a["segmentation"] = [
            [v + dx if i % 2 == 0 else v for i, v in enumerate(poly)] for poly in a["segmentation"]
        ]
        if rng.random() < 0.3:
            a["category_id"] = int(rng.choice([c for c in categories if c != a["category_id"]]))
    path.write_text(json.dumps(doc))


@pytest.mark.slow
def test_the_sloppy_annotator_ranks_worst(tmp_path):
    from qm_dagster.importers import import_version

    datasets = tmp_path / "datasets"
    import_version(coco_fake_spec(), str(datasets), "v")
    _deal(datasets / "v" / "annotations.json", np.random.default_rng(0))
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "checks:\n  - name: every_annotator_found\n    target: annotators\n"
        "    stat: found@fake\n    op: '>='\n    value: 0.3\n"
    )
    settings = dataclasses.replace(
        Settings.load({}),
        datasets=str(datasets),
        storage=str(tmp_path / "storage"),
        workers=1,
        checks=str(checks),
    )
    result = materialize_version(settings, "v")
    assert result.success
    frame = storage.read_parquet(storage.asset_url(settings.storage, "analysis/annotators", "v"))
    table = frame.set_index("annotator")
    assert sorted(table.index) == ["ann", "bob", "sloppy"]
    assert table.objects.sum() == 839 and (table.images > 10).all()
    worst = {
        "found@fake": table["found@fake"].idxmin(),
        "label_error_share": table.label_error_share.idxmax(),
        "label/neighbour_agreement": table["label/neighbour_agreement"].idxmin(),
    }
    assert set(worst.values()) == {"sloppy"}, table.T
    assert table["found@fake"]["sloppy"] < 0.5 * table["found@fake"].drop("sloppy").min()
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert "sloppy" in check.metadata["measured"].value
