"""The HTML report: every section present, galleries and histograms embedded, dataset text
escaped. (Rendering in headless Chromium is the next step of issue 4.)"""

from __future__ import annotations

import re

import pandas as pd

from qm_dagster import storage
from qm_dagster.report import build_report
from tests.images import real_photos, write_image


def test_report_sections_galleries_and_escaping(tmp_path):
    evil = "a<script>alert(1)</script>.png"
    rows = []
    for i, (name, rgb) in enumerate(real_photos().items()):
        file_name = evil if i == 0 else f"{name}.png"
        write_image(tmp_path / file_name, rgb)
        rows.append({"image_id": i + 1, "file_name": file_name, "url": str(tmp_path / file_name)})
    manifest = pd.DataFrame(rows)
    table = manifest[["image_id", "file_name"]].assign(**{"data/brightness": [0.1, 0.5, 0.3, 0.9]})
    annotations = pd.DataFrame(
        {
            "annotation_id": [7],
            "image_id": [1],
            "bbox_x": [10.0],
            "bbox_y": [10.0],
            "bbox_w": [50.0],
            "bbox_h": [40.0],
        }
    )
    queue = pd.DataFrame(
        {
            "kind": ["missing"],
            "score": [0.9],
            "image_id": [1],
            "annotation_id": [7],
            "evidence": ["<img src=x onerror=alert(1)>"],
        }
    )
    drift = pd.DataFrame({"metric": ["data/brightness"], "verdict": ["drift"]})
    page = build_report(
        "v<1>",
        {"kind": "production", "reference": "train"},
        manifest,
        table,
        table.assign(**{"data/brightness": [0.5, 0.6, 0.7, 0.8]}),
        annotations,
        {"drift": drift, "label_errors": queue},
    )
    for section in (
        "metrics",
        "drift",
        "sliced_evaluation",
        "outliers",
        "duplicates",
        "label_errors",
    ):
        assert f"id='{section}'" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "onerror=alert" not in page.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    images = re.findall(r"src=['\"]data:image/(png|jpeg);base64,", page)
    assert images.count("png") == 1 and images.count("jpeg") >= 5  # histogram, gallery, queue
    url = str(tmp_path / "r" / "v.html")
    storage.write_bytes_atomic(url, page.encode())
    assert storage.read_bytes(url).decode().startswith("<!doctype html>")
