"""Export as COCO (with every metric value), in the Ultralytics YOLO layout and as FiftyOne's
image detection dataset: a slice of the demo's production version written out and imported
again by ``qm import`` equals the original (images of the slice, classes, boxes, polygons)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from qm_dagster import load
from qm_dagster.dataset import DatasetRoot
from qm_dagster.export import METRICS_FIELD, export_coco, export_fiftyone, export_yolo, select
from qm_dagster.importers import ImportSpec, import_ultralytics, import_version
from qm_dagster.slices import apply, find


def _dark(demo):
    """The production version and its 'dark' slice's rows (an image-level named slice)."""
    settings = demo.settings
    rows = apply(
        find(settings.slices, "dark"), load("analysis/quality_table/image", "production", settings)
    )
    assert 0 < len(rows) < len(load("dataset/manifest", "production", settings))
    return DatasetRoot(settings.datasets).version("production"), rows


def _objects(coco, prefix: str = "") -> list[tuple]:
    """(file name, class, box, polygon) of every object, sorted; boxes and polygons rounded."""
    ann = coco.annotations.merge(coco.images[["image_id", "file_name"]], on="image_id")
    out = []
    for r in ann.itertuples():
        polygon = json.loads(r.segmentation)[0] if isinstance(r.segmentation, str) else None
        out.append(
            (
                r.file_name.removeprefix(prefix),
                r.category,
                tuple(round(v, 6) for v in (r.bbox_x, r.bbox_y, r.bbox_w, r.bbox_h)),
                tuple(round(v, 6) for v in polygon) if polygon else None,
            )
        )
    return sorted(out)


def _slice_objects(version, rows) -> list[tuple]:
    coco = version.instances()
    kept = coco.images[coco.images.image_id.isin(rows.image_id)]
    coco.annotations = coco.annotations[coco.annotations.image_id.isin(kept.image_id)]
    coco.images = kept
    return _objects(coco)


def _exported(demo, tmp_path, exporter):
    """The dark slice written by ``exporter`` with the quality tables' values: the version,
    the slice's rows, the image and object tables, the output folder."""
    version, rows = _dark(demo)
    images, objects = (
        load(f"analysis/quality_table/{level}", "production", demo.settings)
        for level in ("image", "object")
    )
    out = tmp_path / "out"
    exporter(select(version, rows), str(out), images, objects)
    return version, rows, images, objects, out


def _reimport(out, fmt: str, images: str, labels: str, root):
    """``qm import`` of an export with the demo detector's predictions, as version rt."""
    spec = ImportSpec(
        images=str(out / images),
        format=fmt,
        labels=str(out / labels),
        predictions=str(out / "predictions" / "demo_detector.json"),
        pred_format=fmt,
        model="demo_detector",
    )
    return import_version(spec, str(root), "rt")


def test_yolo_export_imports_back_equal(demo, tmp_path):
    version, rows = _dark(demo)
    summary = export_yolo(select(version, rows), str(tmp_path / "out"), "val")
    assert "(0 crowd or unsized objects left out)" in summary
    (again,) = import_ultralytics(str(tmp_path / "out" / "data.yaml"), str(tmp_path / "r"), "rt")
    assert again.name == "rt-val"
    coco = again.instances()
    files = version.instances().images.set_index("image_id").file_name
    assert sorted(coco.images.file_name) == sorted(f"images/val/{files[i]}" for i in rows.image_id)
    assert list(coco.categories.category) == list(version.instances().categories.category)
    assert _objects(coco, "images/val/") == _slice_objects(version, rows)
    assert not again.import_issues()


def test_coco_export_carries_metric_values_and_imports_back_equal(demo, tmp_path):
    version, rows, images, objects, out = _exported(demo, tmp_path, export_coco)
    written = json.loads((out / "annotations.json").read_text())
    brightness = images.set_index("image_id")["data/brightness"]
    for image in written["images"]:
        assert image[METRICS_FIELD]["data/brightness"] == pytest.approx(brightness[image["id"]])
    area = objects.set_index("annotation_id")["label/object_area"]
    for ann in written["annotations"]:
        assert ann[METRICS_FIELD]["label/object_area"] == pytest.approx(area[ann["id"]])
    again = _reimport(out, "coco", "images", "annotations.json", tmp_path / "r")
    assert _objects(again.instances()) == _slice_objects(version, rows)
    before = version.predictions("demo_detector")
    after = again.predictions("demo_detector")
    assert len(after) == before.image_id.isin(rows.image_id).sum() > 0
    columns = ["image_id", "category", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "score"]
    kept = before[before.image_id.isin(rows.image_id)][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(after[columns].reset_index(drop=True), kept)


def test_fiftyone_export_carries_metric_values_and_imports_back_equal(demo, tmp_path):
    """FiftyOne's layout: relative boxes, class indices, object metrics as attributes and image
    metrics in metrics.json; ``qm import --format fiftyone`` gives back the slice's images,
    classes, boxes and each model's scored boxes."""
    version, rows, images, objects, out = _exported(demo, tmp_path, export_fiftyone)
    labels = json.loads((out / "labels.json").read_text())
    files = version.instances().images.set_index("image_id").file_name
    keys = {files[i].rsplit(".", 1)[0]: i for i in rows.image_id}
    assert sorted(labels["labels"]) == sorted(keys)
    assert labels["classes"] == list(version.instances().categories.category)
    area = objects.set_index("annotation_id")["label/relative_area"].to_numpy()
    got = [d["attributes"]["relative_area"] for ds in labels["labels"].values() for d in ds]
    assert sorted(got) == pytest.approx(
        sorted(area[objects.image_id.isin(rows.image_id).to_numpy()])
    )
    metrics = json.loads((out / "metrics.json").read_text())
    brightness = images.set_index("image_id")["data/brightness"]
    for key, image_id in keys.items():
        assert metrics[key]["data/brightness"] == pytest.approx(brightness[image_id])
    again = _reimport(out, "fiftyone", "data", "labels.json", tmp_path / "r")
    assert not again.import_issues()
    boxes_only = [o[:3] for o in _slice_objects(version, rows)]
    assert [o[:3] for o in _objects(again.instances())] == boxes_only
    before = version.predictions("demo_detector")
    before = before[before.image_id.isin(rows.image_id)].merge(files.reset_index(), on="image_id")
    after = again.predictions("demo_detector")
    after = after.merge(again.instances().images[["image_id", "file_name"]], on="image_id")
    columns = ["file_name", "category", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "score"]
    order = ["file_name", "bbox_x", "bbox_y"]
    pd.testing.assert_frame_equal(
        after[columns].sort_values(order).reset_index(drop=True),
        before[columns].sort_values(order).reset_index(drop=True),
        rtol=1e-12,
    )


def test_cli_export_formats(demo, tmp_path, monkeypatch, capsys):
    from qm_dagster.cli import main

    monkeypatch.setenv("QM_CONFIG", str(demo.config))
    monkeypatch.setenv("QM_DATASETS", demo.settings.datasets)
    monkeypatch.setenv("QM_STORAGE", demo.settings.storage)
    for fmt in ("coco", "yolo", "fiftyone"):
        out = tmp_path / fmt
        assert (
            main(["export", "production", "--slice", "dark", "--format", fmt, "--out", str(out)])
            == 0
        )
        assert f"as {fmt}" in capsys.readouterr().out
    assert (tmp_path / "coco" / "annotations.json").is_file()
    assert (tmp_path / "yolo" / "data.yaml").is_file()
    assert (tmp_path / "fiftyone" / "labels.json").is_file()
    assert main(["export", "production", "--format", "yolo"]) == 2  # --out missing: a message
    assert "needs --out" in capsys.readouterr().err
