"""Every dataset in ../shared/data imports; counts are checked against the source files themselves."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest

from qm_dagster.dataset import DatasetRoot
from qm_dagster.errors import DatasetError
from qm_dagster.importers import ImportSpec, import_version
from tests.conftest import cartucho_spec, coco_fake_spec, shared


def _lines(folder) -> int:
    return sum(
        1 for f in folder.glob("*.txt") for line in f.read_text().splitlines() if line.strip()
    )


def _imported(tmp_path, spec: ImportSpec, name: str = "v1"):
    version = import_version(spec, str(tmp_path), name, kind="train")
    assert DatasetRoot(str(tmp_path)).listing().complete == [name]
    coco = version.instances()
    models = list(version.prediction_files())
    return coco, version.predictions(models[0], coco) if models else None


def test_cartucho_txt(tmp_path):
    src = shared("cartucho-voc85") / "input"
    coco, preds = _imported(
        tmp_path,
        cartucho_spec(),
    )
    assert len(coco.images) == 85
    assert len(coco.annotations) == _lines(src / "ground-truth") == 686
    assert len(preds) == _lines(src / "detection-results") == 494
    first = (src / "ground-truth" / "2007_000027.txt").read_text().split()
    row = coco.annotations[coco.annotations.image_id == 1].iloc[0]
    name, x1, y1, x2, y2 = first[0], *map(float, first[1:5])
    assert (row.category, row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h) == (
        name,
        x1,
        y1,
        x2 - x1,
        y2 - y1,
    )


def test_voc_xml_with_difficult(tmp_path):
    src = shared("rafael-db-voc100")
    coco, preds = _imported(
        tmp_path,
        ImportSpec(
            images=str(src / "images"),
            format="voc",
            labels=str(src / "gts" / "pascalvoc_format"),
            predictions=str(src / "dets" / "abs_xyx2y2"),
            pred_format="txt-xyxy",
            pred_names=str(src / "voc.names"),
            model="det",
        ),
    )
    objects = [
        o
        for f in (src / "gts" / "pascalvoc_format").glob("*.xml")
        for o in ET.parse(f).getroot().iter("object")
    ]
    assert len(coco.annotations) == len(objects) == 273
    assert len(preds) == _lines(src / "dets" / "abs_xyx2y2") == 452
    raw = json.loads((tmp_path / "v1" / "annotations.json").read_text())
    assert sum(a.get("difficult", 0) for a in raw["annotations"]) == 38


def test_yolo_matches_voc_boxes(tmp_path):
    src = shared("rafael-db-voc100")
    voc, _ = _imported(
        tmp_path / "a",
        ImportSpec(
            images=str(src / "images"), format="voc", labels=str(src / "gts" / "pascalvoc_format")
        ),
    )
    yolo, preds = _imported(
        tmp_path / "b",
        ImportSpec(
            images=str(src / "images"),
            format="yolo",
            labels=str(src / "gts" / "yolo_format" / "obj_train_data"),
            names=str(src / "gts" / "yolo_format" / "obj.names"),
            predictions=str(src / "dets" / "rel_xywh"),
            pred_format="yolo",
            pred_names=str(src / "voc.names"),
            model="det",
        ),
    )
    assert len(yolo.annotations) == 273 and len(preds) == 452
    key = ["image_id", "category"]
    a = voc.annotations.sort_values([*key, "bbox_x", "bbox_y"]).reset_index(drop=True)
    b = yolo.annotations.sort_values([*key, "bbox_x", "bbox_y"]).reset_index(drop=True)
    assert list(a.category) == list(b.category)
    # YOLO stores relative centres with 6 decimals: boxes agree to about a pixel
    for col in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"):
        assert (a[col] - b[col]).abs().max() < 1.5


def test_voc_toy_and_images_without_labels(tmp_path):
    src = shared("rafael-toy-voc10")
    coco, preds = _imported(
        tmp_path,
        ImportSpec(
            images=str(src / "images"),
            format="voc",
            labels=str(src / "gts_vocpascal_format"),
            predictions=str(src / "dets_classname_abs_xyx2y2"),
            pred_format="txt-xyxy",
            model="toy",
        ),
    )
    assert len(coco.images) == 12 and len(coco.annotations) == 12 and len(preds) == 12


def test_coco_keeps_every_record(tmp_path):
    coco, preds = _imported(tmp_path, coco_fake_spec())
    assert (len(coco.images), len(coco.annotations), len(preds)) == (100, 839, 734)
    assert len(list((tmp_path / "v1" / "images").glob("*.jpg"))) == 54


def test_odm_txt_xywh_without_pixels_is_refused_clearly(tmp_path):
    """Label files whose images are missing: strict refuses the import naming the file; by
    default the images import and every orphan label file is reported."""
    src = shared("rafael-odm-7-noimages")
    spec = ImportSpec(
        images=str(src / "aux_images"), format="txt-xywh", labels=str(src / "groundtruths")
    )
    with pytest.raises(DatasetError, match="has no image"):
        import_version(dataclasses.replace(spec, strict=True), str(tmp_path / "a"), "v1")
    assert DatasetRoot(str(tmp_path / "a")).listing().complete == []
    version = import_version(spec, str(tmp_path / "b"), "v1")
    orphans = {p.stem for p in (src / "groundtruths").glob("*.txt")}
    issues = version.import_issues()
    assert {i.file for i in issues} == orphans
    assert all("has no image" in i.reason and i.severity == "error" for i in issues)


def test_bad_label_line_names_file_and_line(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"")
    (tmp_path / "lbl" / "a.txt").write_text("cat 1 2 3 4\ndog 1 two 3 4\n")
    spec = ImportSpec(
        images=str(tmp_path / "img"), format="txt-xyxy", labels=str(tmp_path / "lbl"), strict=True
    )
    with pytest.raises(DatasetError, match=r"a.txt at line 2: expected numbers"):
        import_version(spec, str(tmp_path / "root"), "v1")
    version = import_version(dataclasses.replace(spec, strict=False), str(tmp_path / "root"), "v1")
    assert list(version.instances().annotations.category) == ["cat"]
    (issue,) = version.import_issues()
    assert (issue.where, issue.severity) == ("line 2", "error")
    assert issue.file.endswith("a.txt") and "expected numbers" in issue.reason
