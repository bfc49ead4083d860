"""Ultralytics YOLO datasets as they ship: the dataset YAML (names as a list or a mapping), one
version per split, YOLO-seg polygons, and the dataset quirks reported instead of aborting."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from pycocotools import mask as mask_utils

from qm_dagster import load
from qm_dagster.cli import main
from qm_dagster.errors import DatasetError
from qm_dagster.importers import import_ultralytics
from tests.conftest import materialize_version
from tests.images import checkerboard, write_image

W, H = 200, 100  # every image of the generated dataset
POLYGON = [0.1, 0.2, 0.5, 0.1, 0.6, 0.7, 0.2, 0.9]  # relative x y pairs


def dataset(tmp_path, names) -> str:
    """A dataset in the Ultralytics layout; returns its YAML's path. train: a.jpg (a box and a
    polygon), b.jpg (an empty label file), c.jpg (a class id outside names, coordinates outside
    [0, 1], one good box), an orphan label file; val: d.jpg (one box)."""
    root = tmp_path / "ds"
    for split, stems in (("train", "abc"), ("val", "d")):
        for stem in stems:
            write_image(root / "images" / split / f"{stem}.jpg", checkerboard(H, W))
        (root / "labels" / split).mkdir(parents=True)
    labels = root / "labels"
    polygon = " ".join(str(v) for v in POLYGON)
    (labels / "train" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.4\n1 {polygon}\n")
    (labels / "train" / "b.txt").write_text("")
    (labels / "train" / "c.txt").write_text(
        "7 0.5 0.5 0.1 0.1\n0 0.5 1.2 0.1 0.1\n1 0.25 0.5 0.5 1\n"
    )
    (labels / "train" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (labels / "val" / "d.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(
        json.dumps({"path": "ds", "train": "images/train", "val": "images/val", "names": names})
    )
    return str(yaml_path)


@pytest.mark.parametrize("names", [["cat", "dog"], {0: "cat", 1: "dog"}])
def test_each_split_is_a_version_with_boxes_and_polygons(tmp_path, names):
    train, val = import_ultralytics(dataset(tmp_path, names), str(tmp_path / "root"), "ds")
    assert (train.name, val.name) == ("ds-train", "ds-val")
    assert (val.meta().kind, val.meta().reference) == ("validation", "ds-train")
    assert train.meta().kind == "train"
    coco = train.instances()
    assert list(coco.categories.category) == ["cat", "dog"]
    ann = coco.annotations.merge(coco.images[["image_id", "file_name"]], on="image_id")
    a = "images/train/a.jpg"  # names relative to the dataset's path, as it ships
    assert sorted(zip(ann.file_name, ann.category, strict=True)) == [
        (a, "cat"),
        (a, "dog"),
        ("images/train/c.jpg", "dog"),
    ]
    assert sorted(coco.images.file_name) == [f"images/train/{s}.jpg" for s in "abc"]
    box = ann[(ann.file_name == a) & (ann.category == "cat")].iloc[0]
    assert [box.bbox_x, box.bbox_y, box.bbox_w, box.bbox_h] == pytest.approx([80, 30, 40, 40])
    polygon = ann[(ann.file_name == a) & (ann.category == "dog")].iloc[0]
    absolute = [v * (W if i % 2 == 0 else H) for i, v in enumerate(POLYGON)]
    assert json.loads(polygon.segmentation) == [pytest.approx(absolute)]
    xs, ys = absolute[0::2], absolute[1::2]
    assert [polygon.bbox_x, polygon.bbox_y, polygon.bbox_w, polygon.bbox_h] == pytest.approx(
        [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    )
    rle = mask_utils.merge(mask_utils.frPyObjects([absolute], H, W))
    assert polygon.area == float(mask_utils.area(rle))
    assert len(val.instances().annotations) == 1


def test_dataset_quirks_are_reported_and_the_rest_imported(tmp_path):
    train, _ = import_ultralytics(dataset(tmp_path, ["cat", "dog"]), str(tmp_path / "r"), "ds")
    issues = {(i.file.rsplit("/", 1)[-1], i.where): i for i in train.import_issues()}
    assert set(issues) == {
        ("b.txt", ""),
        ("c.txt", "line 1"),
        ("c.txt", "line 2"),
        ("orphan.txt", ""),
    }
    assert issues[("b.txt", "")].severity == "info"
    assert "not an index into the names" in issues[("c.txt", "line 1")].reason
    assert "outside [0, 1]" in issues[("c.txt", "line 2")].reason
    assert "without an image" in issues[("orphan.txt", "")].reason
    assert {i.severity for k, i in issues.items() if k[0] != "b.txt"} == {"error"}


def test_strict_fails_on_the_first_error_and_writes_nothing(tmp_path):
    """An empty label file is an image without objects (noted, not an error); the class id
    outside the names fails the strict import, before any version is committed."""
    root = tmp_path / "r"
    with pytest.raises(DatasetError, match=r"c.txt at line 1: class '7' is not an index"):
        import_ultralytics(dataset(tmp_path, ["cat", "dog"]), str(root), "ds", strict=True)
    assert not (root / "ds-train").exists()


def test_cli_import_summary_and_data_issues_rows(tmp_path, settings, capsys):
    yaml_path = dataset(tmp_path, {0: "cat", 1: "dog"})
    args = ["import", "ds", "--format", "ultralytics", "--labels", yaml_path]
    assert main([*args, "--to", settings.datasets]) == 0
    out = capsys.readouterr().out
    assert "ds-train" in out and "ds-val" in out and "4 issues" in out
    paths = [["dataset", n] for n in ("manifest", "data_issues", "annotations")]
    paths.append(["label", "object_area"])
    assert materialize_version(settings, "ds-train", [dg.AssetKey(p) for p in paths]).success
    # the polygon's label/object_area: its mask's area by pycocotools, at the image's size
    areas = load("label/object_area", "ds-train", settings)
    objects = load("dataset/annotations", "ds-train", settings)
    polygon = objects[objects.segmentation.notna()].annotation_id.item()
    absolute = [v * (W if i % 2 == 0 else H) for i, v in enumerate(POLYGON)]
    expected = mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([absolute], H, W)))
    assert areas.set_index("annotation_id").value[polygon] == float(expected)
    issues = load("dataset/data_issues", "ds-train", settings)
    imported = issues[issues.stage == "import"]
    assert len(imported) == 4
    assert set(imported.severity) == {"error", "info"}
    assert imported.reason.str.contains("line 2: coordinates outside").any()


def test_splits_as_image_lists_and_lists_of_folders(tmp_path):
    """COCO's layout: ``train: train.txt`` (one image path a line, relative to the list; a
    listed image that is missing is reported) and ``val: [folder, folder]``."""
    yaml_path = dataset(tmp_path, ["cat", "dog"])
    root = tmp_path / "ds"
    (root / "train.txt").write_text("./images/train/a.jpg\n./images/train/gone.jpg\n")
    write_image(root / "images" / "extra" / "e.jpg", checkerboard(H, W))
    (root / "labels" / "extra").mkdir()
    (root / "labels" / "extra" / "e.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    data = json.loads(Path(yaml_path).read_text())
    data.update(train="train.txt", val=["images/val", "images/extra"])
    Path(yaml_path).write_text(json.dumps(data))
    train, val = import_ultralytics(yaml_path, str(tmp_path / "r"), "ds")
    assert list(train.instances().images.file_name) == ["images/train/a.jpg"]
    assert len(train.instances().annotations) == 2
    (missing,) = train.import_issues()  # no orphans told beside a list's images
    assert (missing.where, missing.severity) == ("line 2", "error")
    assert "gone.jpg not found" in missing.reason
    coco = val.instances()
    assert sorted(coco.images.file_name) == ["images/extra/e.jpg", "images/val/d.jpg"]
    assert sorted(coco.annotations.category) == ["cat", "dog"]
