"""Bad pixels lose nothing: corrupt files land in dataset/data_issues, the rest is measured exactly."""

from __future__ import annotations

import dataclasses

import cv2
import dagster as dg
import pytest

from qm_dagster import load
from qm_dagster.manifest import inspect_bytes
from tests.conftest import materialize_version
from tests.images import commit, png_with_header, real_photos, write_image
from tests.test_image_metrics import reference_values


@pytest.fixture
def corrupt_version(settings):
    root = settings.datasets
    images = f"{root}/v1/images"
    from pathlib import Path

    folder = Path(images)
    good = {}
    for name, rgb in real_photos().items():
        write_image(folder / f"{name}.png", rgb)
        good[f"{name}.png"] = rgb
    jpeg = write_image(folder / "whole.jpg", real_photos()["coffee"])
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "huge.png").write_bytes(png_with_header(20000, 20000))
    commit(Path(root) / "v1", kind="train")
    return good


def test_inspect_bytes_reasons():
    assert inspect_bytes(b"", 100).problem == "empty file (0 bytes)"
    assert "not an image" in inspect_bytes(b"hello", 100).problem
    assert (
        "above the max_pixels limit 100000000"
        in inspect_bytes(png_with_header(20000, 20000), 10**8).problem
    )
    _, buf = cv2.imencode(".jpg", real_photos()["astronaut"])
    assert inspect_bytes(buf.tobytes(), 10**8).problem is None
    assert "truncated JPEG" in inspect_bytes(buf.tobytes()[:5000], 10**8).problem
    assert inspect_bytes(buf.tobytes() + b"trailing vendor data", 10**8).problem is None


def test_corrupt_files_become_issues_and_good_values_are_exact(settings, corrupt_version):
    settings = dataclasses.replace(settings, workers=2, chunk_size=2)
    result = materialize_version(settings, "v1")
    assert result.success
    issues = load("dataset/data_issues", "v1", settings).set_index("file_name")
    assert sorted(issues.index) == ["empty.jpg", "huge.png", "text.jpg", "truncated.jpg"]
    assert issues.loc["empty.jpg", "reason"] == "empty file (0 bytes)"
    assert "not an image" in issues.loc["text.jpg", "reason"]
    assert "truncated JPEG" in issues.loc["truncated.jpg", "reason"]
    assert "20000x20000" in issues.loc["huge.png", "reason"]
    assert set(issues.stage) == {"manifest"}

    manifest = load("dataset/manifest", "v1", settings).set_index("file_name")
    assert manifest.ok.sum() == 5
    measured = {}
    for metric in ("brightness", "contrast", "sharpness", "colorfulness", "red", "entropy"):
        frame = load(f"data/{metric}", "v1", settings)
        assert len(frame) == 5  # the 4 good PNGs + the intact JPEG
        measured[metric] = dict(zip(frame.image_id, frame.value, strict=True))
    for name, rgb in corrupt_version.items():
        expected = reference_values(rgb)
        got = {m: measured[m][name] for m in measured}
        assert got == pytest.approx({m: expected[m] for m in measured}, rel=1e-9, abs=1e-12)
    decoded = [
        m.event_specific_data.materialization.metadata["images decoded"].value
        for m in result.get_asset_materialization_events()
        if m.asset_key.path[0] == "data" and m.asset_key.path[1] == "brightness"
    ]
    assert decoded == [5]  # the huge header was never decoded


def test_decode_returns_none_for_empty_and_garbage_bytes():
    # regression: cv2.imdecode raises on an empty buffer (the report's gallery hit it)
    from qm_dagster.passes.decode import decode

    assert decode(b"") is None
    assert decode(b"not an image") is None


def test_manifest_on_processes_equals_one_thread(settings, corrupt_version, monkeypatch):
    """Local files are inspected on a process pool, several files a task: the manifest and its
    issues must be those of inspecting every file in turn, row for row."""
    import pandas as pd

    from qm_dagster import manifest
    from qm_dagster.dataset import DatasetRoot

    version = DatasetRoot(settings.datasets).version("v1")
    alone = manifest.build_manifest(version, 10**8, threads=1)
    monkeypatch.setattr(manifest, "INSPECT_CHUNK", 2)  # several tasks a batch, out of order
    pooled = manifest.build_manifest(version, 10**8, workers=2)
    assert len(alone.images) == len(corrupt_version) + 5
    pd.testing.assert_frame_equal(pooled.images, alone.images)
    pd.testing.assert_frame_equal(pooled.issues, alone.issues)
    assert set(alone.issues.file_name) == {"empty.jpg", "huge.png", "text.jpg", "truncated.jpg"}


def test_symlinks_that_leave_the_version_are_issues_not_read(tmp_path):
    """A version's producer must not make the workers read other files of the machine: a link
    out of images/ is a data_issues row and its file is never read; a link that stays inside
    (or an images folder that is itself a link) is an ordinary image."""
    from qm_dagster.dataset import Version
    from qm_dagster.manifest import OUTSIDE, build_manifest

    secret = tmp_path / "elsewhere" / "secret.png"
    write_image(secret, real_photos()["coffee"])
    store = tmp_path / "store"
    write_image(store / "a.png", real_photos()["astronaut"])
    (store / "inside.png").symlink_to(store / "a.png")
    (store / "outside.png").symlink_to(secret)
    (store / "dotdot.png").symlink_to("../elsewhere/secret.png")
    version = tmp_path / "root" / "v"
    version.mkdir(parents=True)
    (version / "images").symlink_to(store)  # the whole folder as a link: allowed
    commit(version)
    manifest = build_manifest(Version(str(tmp_path / "root"), "v"), 10**8, threads=1)
    ok = dict(zip(manifest.images.file_name, manifest.images.ok, strict=True))
    assert ok == {"a.png": True, "inside.png": True, "outside.png": False, "dotdot.png": False}
    reasons = manifest.issues.set_index("file_name").reason
    assert reasons["outside.png"] == OUTSIDE and reasons["dotdot.png"] == OUTSIDE
    assert manifest.images.set_index("file_name").loc["outside.png", "content_hash"] in ("", None)


def test_gif_and_tiff_are_measured_and_other_files_are_reported_as_skipped(settings):
    """GIF (first frame) and TIFF are decoded like the other formats; a text file, a HEIC and a
    folder named like an image are data_issues rows of severity info, not silence."""
    from pathlib import Path

    from PIL import Image

    folder = Path(settings.datasets) / "v" / "images"
    photo = real_photos()["coffee"][:64, :96]
    write_image(folder / "a.png", photo)
    Image.fromarray(photo).save(folder / "b.tif")
    Image.fromarray(photo).save(folder / "c.gif")
    (folder / "notes.txt").write_text("shot on a phone\n")
    (folder / "d.heic").write_bytes(b"\x00" * 64)
    (folder / "x.jpg").mkdir()
    commit(folder.parent)
    keys = ["dataset/manifest", "dataset/data_issues", "dataset/annotations", "data/brightness"]
    result = materialize_version(settings, "v", [dg.AssetKey(k.split("/")) for k in keys])
    assert result.success
    brightness = load("data/brightness", "v", settings).set_index("image_id").value
    assert set(brightness.index) == {"a.png", "b.tif", "c.gif"}
    assert brightness["b.tif"] == pytest.approx(brightness["a.png"], abs=1e-12)  # lossless
    issues = load("dataset/data_issues", "v", settings).set_index("file_name")
    assert set(issues.index) == {"notes.txt", "d.heic", "x.jpg/"}
    assert set(issues.severity) == {"info"} and issues.image_id.isna().all()
    assert "(.heic)" in issues.reason["d.heic"] and "folder" in issues.reason["x.jpg/"]
    meta = result.asset_materializations_for_node("dataset_manifest")[0].metadata
    assert meta["skipped files"].value == 3
