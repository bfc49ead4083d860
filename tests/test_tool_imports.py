"""CVAT for images 1.1 (XML) and Label Studio (JSON export), written by hand with known boxes and
polygons: the same objects come out of both, shapes we do not import are reported."""

from __future__ import annotations

import json

import pytest
from pycocotools import mask as mask_utils

from qm_dagster.errors import DatasetError
from qm_dagster.importers import ImportSpec, import_version
from tests.images import checkerboard, write_image

W, H = 200, 100
POLYGON = [100.0, 10.0, 150.5, 20.0, 140.0, 80.0, 110.0, 60.0]  # absolute x y pairs

CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>car</name><type>any</type></label>
    <label><name>person</name><type>any</type></label>
  </labels></task></meta>
  <image id="0" name="a.jpg" width="200" height="100">
    <box label="car" occluded="0" source="manual" xtl="10" ytl="20" xbr="60" ybr="70" z_order="0">
      <attribute name="parked">true</attribute>
    </box>
    <polygon label="person" occluded="0" source="manual"
             points="100.0,10.0;150.5,20.0;140.0,80.0;110.0,60.0" z_order="0"/>
    <polyline label="car" occluded="0" source="manual" points="1,1;5,5" z_order="0"/>
  </image>
  <image id="1" name="b.jpg" width="200" height="100">
    <box label="person" occluded="0" xtl="0" ytl="0" xbr="200" ybr="100" z_order="0"/>
  </image>
  <image id="2" name="c.jpg" width="200" height="100">
    <box label="car" occluded="0" xtl="50" ytl="0" xbr="10" ybr="10" z_order="0"/>
  </image>
</annotations>
"""


def _rect(x, y, w, h, label, rotation=0, **extra) -> dict:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": rotation}
    return {"type": "rectanglelabels", "value": {**value, "rectanglelabels": [label]}, **extra}


SIZE = {"original_width": W, "original_height": H}
POINTS = [[x / W * 100, y / H * 100] for x, y in zip(POLYGON[0::2], POLYGON[1::2], strict=True)]
LABEL_STUDIO = [
    {
        "id": 1,
        "data": {"image": "/data/upload/1/3f2a9c1d-a.jpg"},  # Label Studio's upload prefix
        "annotations": [
            {
                "was_cancelled": False,
                "result": [
                    _rect(5, 20, 25, 50, "car", **SIZE),
                    {
                        "type": "polygonlabels",
                        "value": {"points": POINTS, "polygonlabels": ["person"]},
                        **SIZE,
                    },
                    {"type": "choices", "value": {"choices": ["day"]}},
                ],
            }
        ],
    },
    {
        "id": 2,
        "data": {"image": "s3://bucket/b.jpg"},
        "annotations": [
            {"was_cancelled": True, "result": [_rect(0, 0, 10, 10, "car", **SIZE)]},
            {"result": [_rect(0, 0, 100, 100, "person")]},  # no size given: the image file's
        ],
    },
    {
        "id": 3,
        "data": {"image": "c.jpg"},
        "annotations": [{"result": [_rect(0, 0, 10, 10, "car", rotation=30, **SIZE)]}],
    },
]


def _images(tmp_path):
    folder = tmp_path / "images"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(folder / name, checkerboard(H, W))
    return str(folder)


def _objects(version) -> list[tuple]:
    coco = version.instances()
    ann = coco.annotations.merge(coco.images[["image_id", "file_name"]], on="image_id")
    return sorted(
        (
            r.file_name,
            r.category,
            (r.bbox_x, r.bbox_y, r.bbox_w, r.bbox_h),
            r.segmentation,
            r.area,
        )
        for r in ann.itertuples()
    )


def _imported(tmp_path, fmt: str, labels, strict: bool = False):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / f"labels.{'xml' if fmt == 'cvat' else 'json'}"
    path.write_text(labels if isinstance(labels, str) else json.dumps(labels))
    spec = ImportSpec(images=_images(tmp_path), format=fmt, labels=str(path), strict=strict)
    return import_version(spec, str(tmp_path / "root"), fmt)


def _expected() -> list[tuple]:
    xs, ys = POLYGON[0::2], POLYGON[1::2]
    area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([POLYGON], H, W))))
    polygon_box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
    return [
        ("a.jpg", "car", (10.0, 20.0, 50.0, 50.0), None, 2500.0),
        ("a.jpg", "person", polygon_box, json.dumps([POLYGON]), area),
        ("b.jpg", "person", (0.0, 0.0, 200.0, 100.0), None, 20000.0),
    ]


@pytest.mark.parametrize("fmt", ["cvat", "labelstudio"])
def test_boxes_and_polygons(tmp_path, fmt):
    version = _imported(tmp_path, fmt, CVAT if fmt == "cvat" else LABEL_STUDIO)
    got = _objects(version)
    expected = _expected()
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[2] == pytest.approx(e[2])
    assert [json.loads(g[3]) if g[3] else None for g in got] == [
        [pytest.approx(POLYGON)] if e[3] else None for e in expected
    ]
    assert [g[4] for g in got] == pytest.approx([e[4] for e in expected])
    assert list(version.instances().categories.category) == ["car", "person"]


def test_shapes_left_out_are_reported(tmp_path):
    cvat = {
        (i.where.split(" ")[0], i.reason)
        for i in _imported(tmp_path / "c", "cvat", CVAT).import_issues()
    }
    assert cvat == {
        ("image[0]", "polyline shapes are not imported"),
        ("image[2]", "max < min in (50.0, 0.0, 10.0, 10.0): shape skipped"),
    }
    studio = _imported(tmp_path / "l", "labelstudio", LABEL_STUDIO).import_issues()
    assert [(i.where, i.reason) for i in studio] == [
        ("[2].annotations[0].result[0]", "a rotated rectangle: result skipped")
    ]


def test_strict_names_the_shape(tmp_path):
    with pytest.raises(DatasetError, match=r"image\[0\] \(a.jpg\) polyline\[2\]: polyline shapes"):
        _imported(tmp_path, "cvat", CVAT, strict=True)
    assert not (tmp_path / "root" / "cvat" / "version.json").exists()


def test_fiftyone_labels_boxes_and_issues(tmp_path):
    """FiftyOne's labels.json: relative boxes scaled by the image file's size, classes by index
    or name; a bad index, a missing image and a malformed box are reported, the rest kept."""
    labels = {
        "classes": ["car", "person"],
        "labels": {
            "a": [
                {"label": 0, "bounding_box": [10 / W, 20 / H, 50 / W, 50 / H]},
                {"label": 7, "bounding_box": [0, 0, 0.1, 0.1]},
                {"label": "person", "bounding_box": [0.1, 0.2]},
            ],
            "b": [{"label": "person", "bounding_box": [0, 0, 200 / W, 100 / H]}],
            "nowhere/d": [{"label": 1, "bounding_box": [0, 0, 0.5, 0.5]}],
        },
    }
    version = _imported(tmp_path, "fiftyone", labels)
    got = _objects(version)
    assert [g[:2] for g in got] == [("a.jpg", "car"), ("b.jpg", "person")]
    assert got[0][2] == pytest.approx((10.0, 20.0, 50.0, 50.0))
    assert got[1][2] == pytest.approx((0.0, 0.0, 200.0, 100.0))
    reasons = sorted((i.where, i.reason.split(":")[0]) for i in version.import_issues())
    assert reasons == [
        ("", "label file d.* has no image named d.*"),
        ("labels['a'][1]", "class index 7 outside classes"),
        ("labels['a'][2]", "bounding_box must be [x, y, w, h], got [0.1, 0.2]"),
        ("labels['nowhere/d']", "no readable image of that name"),
    ]
