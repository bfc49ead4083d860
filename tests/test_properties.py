"""Property-based tests (hypothesis): the readers of COCO, YOLO, VOC and txt files turn any
input into a valid result or a DatasetError, never another exception or a box with a
non-finite coordinate; every image metric takes any uint8 image of any size without a crash
and lands inside its descriptor's range."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qm_dagster.coco import parse_instances, parse_results
from qm_dagster.errors import DatasetError
from qm_dagster.importers.readers import read_txt_dir, read_voc_dir
from qm_dagster.metrics import load_metrics, metrics
from qm_dagster.metrics.view import ImageView
from qm_dagster.passes.decode import apply_metric

load_metrics()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
numbers = st.integers(-5, 50) | st.floats(-5, 50) | st.sampled_from([math.nan, math.inf, -math.inf])
field = numbers | leaves | st.lists(numbers, max_size=6)


def coco_like():
    """COCO-shaped documents whose fields hold anything: deep enough to reach each check."""
    image = st.fixed_dictionaries(
        {"id": st.integers(0, 4) | leaves, "file_name": st.text(max_size=10) | leaves},
        optional={"width": field, "height": field, "video_id": field, "frame_index": field},
    )
    annotation = st.fixed_dictionaries(
        {
            "id": st.integers(0, 6) | leaves,
            "image_id": st.integers(0, 4) | leaves,
            "category_id": st.integers(0, 3) | leaves,
            "bbox": st.lists(numbers, min_size=0, max_size=5) | leaves,
        },
        optional={
            "area": field,
            "iscrowd": field,
            "segmentation": field | st.lists(st.lists(numbers, max_size=8), max_size=2),
            "keypoints": st.lists(numbers, max_size=9) | leaves,
            "track_id": field,
        },
    )
    category = st.fixed_dictionaries(
        {"id": st.integers(0, 3) | leaves, "name": st.text(max_size=6) | leaves}
    )
    return st.fixed_dictionaries(
        {
            "images": st.lists(image, max_size=4) | leaves,
            "annotations": st.lists(annotation, max_size=5),
            "categories": st.lists(category, max_size=3),
        }
    )


def _finite_boxes(frame, columns=("bbox_x", "bbox_y", "bbox_w", "bbox_h")) -> bool:
    values = frame[list(columns)].to_numpy(dtype=float)
    return bool(np.isfinite(values).all() and (values[:, 2:] >= 0).all())


@SETTINGS
@given(doc=json_values | coco_like(), strict=st.booleans())
def test_coco_instances_are_valid_or_a_dataset_error(doc, strict):
    try:
        tables = parse_instances(doc, "a.json", strict=strict)
    except DatasetError:
        return
    assert _finite_boxes(tables.annotations)
    assert set(tables.annotations.image_id) <= set(tables.images.image_id)
    assert tables.annotations.annotation_id.is_unique and tables.images.image_id.is_unique
    assert not strict or tables.quarantined == []


@SETTINGS
@given(
    doc=json_values
    | st.lists(
        st.dictionaries(
            st.sampled_from(["image_id", "category_id", "bbox", "score", "scores", "segmentation"]),
            field,
        ),
        max_size=4,
    ),
    quarantine=st.booleans(),
)
def test_coco_results_are_valid_or_a_dataset_error(doc, quarantine):
    from qm_dagster.coco import parse_categories

    categories = parse_categories({"categories": [{"id": 1, "name": "a"}]}, "c.json")
    try:
        frame = parse_results(doc, "r.json", [1, 2], categories, [] if quarantine else None)
    except DatasetError:
        return
    assert _finite_boxes(frame) and np.isfinite(frame.score.to_numpy(dtype=float)).all()


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")


line_tokens = st.lists(
    st.sampled_from(["0", "1", "2", "-1", "7", "cat", "0.5", "nan", "inf", "-3", "1e400", "x"])
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=5),
    max_size=7,
)
txt_files = st.lists(line_tokens.map(" ".join), max_size=5).map("\n".join)


@SETTINGS
@given(
    text=txt_files,
    layout=st.sampled_from(["xyxy", "xywh", "yolo"]),
    score=st.booleans(),
    named=st.booleans(),
)
@example(text="cat 1 2 -3 4", layout="xywh", score=False, named=False)  # found: negative width
@example(text="0 1 2 nan 4", layout="xyxy", score=False, named=True)  # found: a NaN box
def test_txt_and_yolo_files_are_valid_or_a_dataset_error(text, layout, score, named):
    names = ["cat", "dog", "bus"] if named else None
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), "img.txt", text)
        try:
            boxes = read_txt_dir(tmp, layout, score, names, sizes={"img": (64, 48)})
        except DatasetError:
            return
    for box in boxes["img"]:
        assert all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h))
        assert box.w >= 0 and box.h >= 0
        assert names is None or box.category in names
        assert box.score is None or math.isfinite(box.score)


xml_text = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda objs: "<annotation>" + "".join(objs) + "</annotation>",
        st.lists(
            st.builds(
                lambda name, a, b, c, d, diff: (
                    f"<object><name>{name}</name><difficult>{diff}</difficult><bndbox>"
                    f"<xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
                    "</bndbox></object>"
                ),
                st.sampled_from(["cat", "", " dog ", "<", "&amp;"]),
                *[st.sampled_from(["1", "5", "-2", "nan", "inf", "", "x", "3.5", "1e400"])] * 4,
                st.sampled_from(["0", "1", "", "yes"]),
            ),
            max_size=3,
        ),
    ),
)


@SETTINGS
@given(text=xml_text)
@example(  # found by this test: a NaN coordinate passed the max < min check
    text="<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
    "<xmax>1</xmax><ymax>nan</ymax></bndbox></object></annotation>"
)
def test_voc_files_are_valid_or_a_dataset_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), "img.xml", text)
        try:
            boxes = read_voc_dir(tmp)
        except DatasetError:
            return
    for box in boxes["img"]:
        assert box.category.strip() and all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h))
        assert box.w >= 0 and box.h >= 0


PIXEL_IMAGE_METRICS = [s for s in metrics("image") if s.reads in ("view", "rgb") and s.builtin]


@pytest.mark.parametrize("spec", PIXEL_IMAGE_METRICS, ids=lambda s: s.name)
@SETTINGS
@given(data=st.data())
def test_image_metrics_take_any_image_and_stay_in_range(spec, data):
    h, w = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    kind = data.draw(st.sampled_from(["random", "constant", "extremes"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == "constant":
        bgr = np.full((h, w, 3), data.draw(st.integers(0, 255)), dtype=np.uint8)
    else:
        bgr = rng.choice(np.array([0, 255], dtype=np.uint8), (h, w, 3))
    value = apply_metric(spec, ImageView(bgr))
    low, high = spec.value_range
    assert math.isfinite(value), (spec.name, bgr.shape, kind)
    assert low is None or value >= low - 1e-12, (spec.name, value)
    assert high is None or value <= high + 1e-12, (spec.name, value)


@pytest.mark.parametrize(
    ("line", "names", "words"),
    [
        ("-1 1 2 3 4", ["a", "b"], "class '-1' is not an index"),  # was names[-1], i.e. 'b'
        ("cat 1 2 -3 4", None, "negative box size -3.0 x 4.0"),  # was a box of width -3
        ("cat 1 2 3 nan", None, "expected finite numbers"),  # was a NaN box
    ],
)
def test_bad_txt_lines_found_by_the_properties_name_file_and_line(tmp_path, line, names, words):
    _write(
        tmp_path, "img.txt", f"cat 0 0 1 1\n{line}\n" if names is None else f"0 0 0 1 1\n{line}\n"
    )
    with pytest.raises(DatasetError, match=words) as err:
        read_txt_dir(str(tmp_path), "xywh", False, names)
    assert err.value.where == "line 2" and err.value.file.endswith("img.txt")
