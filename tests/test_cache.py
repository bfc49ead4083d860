"""The content-keyed cache of the image pass: reuse equals a fresh computation at every level,
what counts as the same image, per-metric code versions, concurrent passes, resume after a kill,
the Dask backend through Dagster on a real LocalCluster, and the cache on S3 (moto)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from qm_dagster import load
from qm_dagster.config import Settings
from qm_dagster.dataset import DatasetRoot
from qm_dagster.manifest import write_manifest
from qm_dagster.metrics import load_metrics, metrics
from qm_dagster.passes.cache import CACHE_DIR, fingerprint
from qm_dagster.passes.image_pass import ENGINE_VERSION, measure_images
from qm_dagster.passes.progress import Progress
from tests.conftest import PROJECT, materialize_version, shared

PASS_OUTPUTS = ("data/", "label/object_", "data/embeddings", "label/embeddings")


def photos(count: int) -> list[Path]:
    """``count`` real 640x480 photos of ../shared/data (skips without it)."""
    files = sorted((shared("cartucho-voc85") / "input" / "images-optional").glob("*.jpg"))
    return files[:count]


def write_version(root: Path, name: str, files: dict[str, bytes], boxes: dict[str, list]) -> None:
    """A COCO version: ``files`` (name -> bytes), ``boxes`` (name -> [x, y, w, h] list), one
    polygon on the first object of each image, ``version.json`` last."""
    folder = root / name
    images, annotations = [], []
    for i, (file_name, data) in enumerate(sorted(files.items()), start=1):
        path = folder / "images" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        images.append({"id": i, "file_name": file_name, "width": 640, "height": 480})
        for j, (x, y, w, h) in enumerate(boxes.get(file_name, [])):
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": 1 + j % 2}
            ann.update({"bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if j == 0:
                ann["segmentation"] = [[x, y, x + w, y, x + w / 2, y + h]]
            annotations.append(ann)
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(coco))
    (folder / "version.json").write_text(json.dumps({"kind": "train"}))


def default_boxes(names) -> dict[str, list]:
    return {n: [[10 + i, 20, 200, 150], [300, 100 + i, 120, 90]] for i, n in enumerate(names)}


def pass_tables(settings, version: str) -> dict[str, pd.DataFrame]:
    """Every image-pass output of ``version`` as stored."""
    base = Path(settings.storage)
    out = {}
    for path in sorted(base.glob(f"*/*/{version}.parquet")):
        key = f"{path.parent.parent.name}/{path.parent.name}"
        if key.startswith(PASS_OUTPUTS) and not key.startswith("data/uniqueness"):
            out[key] = pd.read_parquet(path)
    return out


def pass_selection(settings) -> list[dg.AssetKey]:
    from definitions import build_definitions

    keys = build_definitions(settings).resolve_asset_graph().get_all_asset_keys()
    wanted = [k for k in keys if k.to_user_string().startswith(("dataset/",))]
    from assets.image_metrics import pixel_specs

    wanted += [dg.AssetKey(s.asset_key.split("/")) for s in pixel_specs(()).values()]
    return [*wanted, dg.AssetKey(["data", "embeddings"]), dg.AssetKey(["label", "embeddings"])]


def pass_metadata(result: dg.ExecuteInProcessResult) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == "data/brightness":
            meta = event.event_specific_data.materialization.metadata
            return {k: v.value for k, v in meta.items()}
    raise AssertionError("data/brightness not materialized")


def test_reused_values_equal_a_fresh_computation(settings, tmp_path):
    files = photos(10)
    v1 = {f"p{i}.jpg": f.read_bytes() for i, f in enumerate(files[:8])}
    write_version(Path(settings.datasets), "v1", v1, default_boxes(v1))
    v2 = {n: v1[n] for n in ("p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg")}  # same bytes, same name
    v2["renamed/q4.jpg"] = v1["p4.jpg"]  # same bytes under a new name
    v2["renamed/q5.jpg"] = v1["p5.jpg"]
    img = cv2.imread(str(files[6]))
    v2["p6.jpg"] = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    v2["new8.jpg"], v2["new9.jpg"] = files[8].read_bytes(), files[9].read_bytes()
    boxes = default_boxes(v1)
    boxes["renamed/q4.jpg"], boxes["renamed/q5.jpg"] = boxes["p4.jpg"], boxes["p5.jpg"]
    boxes["p3.jpg"] = [[10, 20, 200, 150], [250, 50, 100, 100]]  # one object moved
    boxes.update(default_boxes(["p6.jpg", "new8.jpg", "new9.jpg"]))
    write_version(Path(settings.datasets), "v2", v2, boxes)

    selection = pass_selection(settings)
    first = materialize_version(settings, "v1", selection)
    assert first.success
    assert (pass_metadata(first)["images decoded"], pass_metadata(first)["images reused"]) == (8, 0)
    second = materialize_version(settings, "v2", selection)
    assert second.success
    meta = pass_metadata(second)
    # new bytes (p6 re-encoded, new8, new9) and p3 (a moved object) are decoded; the rest
    # (same bytes, renamed or not) reused
    assert (meta["images decoded"], meta["images reused"]) == (4, 5)

    fresh = dataclasses.replace(settings, storage=str(tmp_path / "fresh"))
    assert materialize_version(fresh, "v2", selection).success
    reused, computed = pass_tables(settings, "v2"), pass_tables(fresh, "v2")
    assert set(reused) == set(computed)
    assert {
        "data/brightness",
        "label/object_sharpness",
        "data/embeddings",
        "label/embeddings",
    } <= set(reused)
    for key in computed:
        pd.testing.assert_frame_equal(reused[key], computed[key], check_exact=True, obj=key)
    assert len(reused["label/object_brightness"]) == 18


def _run_pass(storage: str, version_dir: Path, specs, **kwargs):
    """The engine's pass on one version folder (manifest written first), as the asset runs it."""
    version = DatasetRoot(str(version_dir.parent)).version(version_dir.name)
    manifest = f"{storage}/dataset/manifest/{version_dir.name}.parquet"
    write_manifest(version, 10**8, manifest, f"{storage}/dataset/data_issues/x.parquet")
    annotations = f"{storage}/ann-{version_dir.name}.parquet"
    Path(annotations).parent.mkdir(parents=True, exist_ok=True)
    version.instances().annotations.to_parquet(annotations)
    return measure_images(
        manifest, specs, storage, version_dir.name, annotations=annotations, **kwargs
    )


def _pixel_specs():
    load_metrics(())
    return [s for s in metrics(None, ()) if s.level in ("image", "object") and s.reads_pixels]


def test_code_version_bump_recomputes_only_that_metric(tmp_path):
    files = {f"p{i}.jpg": f.read_bytes() for i, f in enumerate(photos(5))}
    write_version(tmp_path / "d", "v1", files, default_boxes(files))
    storage = str(tmp_path / "s")
    specs = _pixel_specs()
    first = _run_pass(storage, tmp_path / "d" / "v1", specs)
    before = {k: pd.read_parquet(u) for k, u in first.outputs.items()}
    parts = set((tmp_path / "s" / CACHE_DIR).rglob("*.parquet"))

    bumped = [
        dataclasses.replace(s, code_version=s.code_version + ".1")
        if s.asset_key == "data/brightness"
        else s
        for s in specs
    ]
    again = _run_pass(storage, tmp_path / "d" / "v1", bumped)
    assert again.decoded == 5  # every image is decoded for brightness, and only brightness runs
    new = set((tmp_path / "s" / CACHE_DIR).rglob("*.parquet")) - parts
    assert {p.parent.name for p in new} == {"image"}
    brightness = next(s for s in bumped if s.asset_key == "data/brightness")
    fp = fingerprint("data/brightness", f"{ENGINE_VERSION}.{brightness.code_version}")
    for part in new:
        assert set(pq.read_schema(part).names) == {"key", "status", "errors", fp}
    for key, url in again.outputs.items():
        pd.testing.assert_frame_equal(pd.read_parquet(url), before[key], obj=key)
    assert _run_pass(storage, tmp_path / "d" / "v1", bumped).decoded == 0


def test_batch_and_slice_sizes_do_not_change_the_tables(tmp_path, monkeypatch):
    """The sweeps cut the manifest into batches and heavy rows into slices; with sizes that cut
    images and objects mid-way, fresh and reused tables equal one uncut pass."""
    from qm_dagster.passes import image_pass

    files = {f"p{i}.jpg": f.read_bytes() for i, f in enumerate(photos(7))}
    write_version(tmp_path / "d", "v1", files, default_boxes(files))
    specs = _pixel_specs()
    options = {"embeddings": True, "object_embeddings": True, "chunk_size": 2}
    whole = _run_pass(str(tmp_path / "whole"), tmp_path / "d" / "v1", specs, **options)
    monkeypatch.setattr(image_pass, "BATCH_ROWS", 5)  # batches of 5 + 2 images, 10 + 4 objects
    monkeypatch.setattr(image_pass, "HEAVY_ROWS", 1)  # image slices of 1, object slices of 8
    cut_storage = str(tmp_path / "cut")
    fresh = _run_pass(cut_storage, tmp_path / "d" / "v1", specs, **options)
    reused = _run_pass(cut_storage, tmp_path / "d" / "v1", specs, **options)
    assert (fresh.decoded, reused.decoded) == (7, 0)
    assert {"data/embeddings", "label/embeddings", "label/object_brightness"} <= set(whole.outputs)
    for key, url in whole.outputs.items():
        expected = pd.read_parquet(url)
        for run in (fresh, reused):
            pd.testing.assert_frame_equal(pd.read_parquet(run.outputs[key]), expected, obj=key)


def test_a_file_changed_after_its_manifest_is_not_cached(tmp_path):
    files = {f"p{i}.jpg": f.read_bytes() for i, f in enumerate(photos(2))}
    write_version(tmp_path / "d", "v1", files, {})
    version = DatasetRoot(str(tmp_path / "d")).version("v1")
    storage = str(tmp_path / "s")
    manifest = f"{storage}/m.parquet"
    write_manifest(version, 10**8, manifest, f"{storage}/i.parquet")
    (tmp_path / "d" / "v1" / "images" / "p1.jpg").write_bytes(files["p0.jpg"])  # replaced
    specs = [s for s in _pixel_specs() if s.asset_key == "data/brightness"]
    result = measure_images(manifest, specs, storage, "v1")
    assert result.failures.stage.tolist() == ["read"]
    assert "changed after the manifest" in result.failures.reason.iloc[0]
    assert result.table("data/brightness").image_id.tolist() == [1]


CONCURRENT = """
import sys
from pathlib import Path
sys.path.insert(0, {project!r})
from tests.test_cache import _pixel_specs, _run_pass
result = _run_pass({storage!r}, Path({folder!r}), _pixel_specs(), chunk_size=2)
print(result.decoded)
"""


def test_two_versions_sharing_images_run_concurrently(tmp_path):
    files = {f"p{i}.jpg": f.read_bytes() for i, f in enumerate(photos(8))}
    shared_files = {n: files[n] for n in list(files)[:6]}
    write_version(tmp_path / "d", "v1", shared_files, default_boxes(shared_files))
    other = {**{n: files[n] for n in list(files)[2:]}}
    write_version(tmp_path / "d", "v2", other, default_boxes(other))
    storage = str(tmp_path / "s")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONCURRENT.format(
                    project=str(PROJECT), storage=storage, folder=str(tmp_path / "d" / v)
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for v in ("v1", "v2")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not list((tmp_path / "s").rglob(".tmp-*"))
    for part in (tmp_path / "s" / CACHE_DIR).rglob("*.parquet"):
        pq.read_table(part)  # every part whole
    for v, names in (("v1", shared_files), ("v2", other)):
        fresh = str(tmp_path / f"fresh-{v}")
        want = _run_pass(fresh, tmp_path / "d" / v, _pixel_specs())
        got = _run_pass(storage, tmp_path / "d" / v, _pixel_specs())
        assert got.decoded == 0 and want.decoded == len(names)
        for key, url in want.outputs.items():
            pd.testing.assert_frame_equal(pd.read_parquet(got.outputs[key]), pd.read_parquet(url))


KILLED = """
import sys
from pathlib import Path
sys.path.insert(0, {project!r})
from tests.test_cache import _pixel_specs, _run_pass
_run_pass({storage!r}, Path({folder!r}), _pixel_specs(), chunk_size=3, workers=1)
"""


def test_rerun_after_kill_decodes_only_what_was_left(tmp_path):
    sources = photos(40)
    files = {f"p{i:02d}.jpg": f.read_bytes() for i, f in enumerate(sources)}
    write_version(tmp_path / "d", "v1", files, default_boxes(files))
    storage = tmp_path / "s"
    script = KILLED.format(
        project=str(PROJECT), storage=str(storage), folder=str(tmp_path / "d" / "v1")
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    parts = storage / CACHE_DIR / "image"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(parts.glob("*.parquet"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(parts.glob("*.parquet")))
    assert 4 <= finished < len(files) / 3, "the pass must be killed half-way"
    assert not (storage / "data" / "brightness").exists()  # no output before the pass ends

    rerun = _run_pass(str(storage), tmp_path / "d" / "v1", _pixel_specs(), chunk_size=3)
    assert rerun.decoded <= len(files) - 3 * finished + 3  # at most one chunk lost (1 worker)
    assert rerun.decoded >= len(files) - 3 * finished - 3
    fresh = _run_pass(str(tmp_path / "fresh"), tmp_path / "d" / "v1", _pixel_specs())
    for key, url in fresh.outputs.items():
        pd.testing.assert_frame_equal(pd.read_parquet(rerun.outputs[key]), pd.read_parquet(url))


@pytest.mark.slow
def test_dask_backend_through_dagster_equals_the_local_pool(settings, tmp_path):
    from distributed import LocalCluster

    files = {f"p{i}.jpg": f.read_bytes() for i, f in enumerate(photos(12))}
    write_version(Path(settings.datasets), "v1", files, default_boxes(files))
    local = dataclasses.replace(settings, storage=str(tmp_path / "local"), workers=2)
    selection = pass_selection(settings)
    assert materialize_version(local, "v1", selection).success
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        on_dask = dataclasses.replace(settings, dask_scheduler=cluster.scheduler_address)
        result = materialize_version(on_dask, "v1", selection)
        assert result.success
        assert pass_metadata(result)["backend"] == f"dask {cluster.scheduler_address}"
        assert pass_metadata(result)["images decoded"] == 12
    want, got = pass_tables(local, "v1"), pass_tables(on_dask, "v1")
    assert set(want) == set(got) and "label/object_brightness" in got
    for key in want:
        pd.testing.assert_frame_equal(got[key], want[key], check_exact=True, obj=key)


def test_progress_reports_rate_and_eta():
    now = [0.0]
    lines: list[str] = []
    progress = Progress(100, lines.append, every=5, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 2.0
        progress.advance(10)
    assert lines == ["image pass: 30/100 images to compute (30%), 5.0 images/s, ETA 0m14s"]
    progress.finish()
    assert lines[-1] == "image pass: 40 images computed in 0m08s (5.0 images/s)"


@pytest.mark.slow
def test_cache_on_s3_identifies_objects_by_etag_and_reuses_them(s3, tmp_path, monkeypatch):
    import s3fs

    import qm_dagster.manifest
    from qm_dagster.manifest import content_from_etag
    from tests.conftest import BUCKET

    monkeypatch.setattr(qm_dagster.manifest, "HEADER_BYTES", 4096)  # these JPEGs are ~60 KB
    files = {f"p{i}.jpg": f.read_bytes() for i, f in enumerate(photos(8))}
    local = tmp_path / "local"
    v1 = {n: files[n] for n in list(files)[:6]}
    v2 = {
        **{n: files[n] for n in list(files)[:4]},
        "p6.jpg": files["p6.jpg"],
        "p7.jpg": files["p7.jpg"],
    }
    for name, content in (("v1", v1), ("v2", v2)):
        write_version(local, name, content, default_boxes(content))
    fs = s3fs.S3FileSystem()
    fs.put(str(local / "v1"), f"{BUCKET}/datasets/v1", recursive=True)
    for rel in ("annotations.json", *(f"images/{n}" for n in ("p6.jpg", "p7.jpg"))):
        fs.put_file(str(local / "v2" / rel), f"{BUCKET}/datasets/v2/{rel}")
    for n in list(files)[:4]:  # server-side copies: same bytes, same ETag, no upload
        fs.copy(f"{BUCKET}/datasets/v1/images/{n}", f"{BUCKET}/datasets/v2/images/{n}")
    fs.put_file(str(local / "v2" / "version.json"), f"{BUCKET}/datasets/v2/version.json")

    on_s3 = Settings(
        datasets=f"s3://{BUCKET}/datasets", storage=f"s3://{BUCKET}/storage", workers=2
    )
    selection = pass_selection(on_s3)
    assert materialize_version(on_s3, "v1", selection).success
    manifest = load("dataset/manifest", "v1", on_s3)
    for row in manifest.itertuples():
        info = fs.info(f"{BUCKET}/datasets/v1/images/{row.file_name}")
        assert row.content_hash == content_from_etag(info["ETag"], info["size"])
        assert row.width == 640 and row.height == 480
    second = materialize_version(on_s3, "v2", selection)
    assert second.success
    assert (pass_metadata(second)["images decoded"], pass_metadata(second)["images reused"]) == (
        2,
        4,
    )
    assert fs.find(f"{BUCKET}/storage/_cache/v1/image")
    assert not [p for p in fs.find(f"{BUCKET}/storage") if "/.tmp" in p]

    fresh = Settings(datasets=str(local), storage=str(tmp_path / "fresh"), workers=1)
    assert materialize_version(fresh, "v2", selection).success
    for key in ("data/brightness", "label/object_sharpness", "data/embeddings", "label/embeddings"):
        pd.testing.assert_frame_equal(load(key, "v2", on_s3), load(key, "v2", fresh), obj=key)


def test_sealed_index_finds_the_same_rows_and_refuses_new_parts(tmp_path):
    """Two parts sharing a key: the newest part wins, before and after ``seal`` (which drops
    the per-part keys); a part added after sealing is an error, not a silent miss."""
    import numpy as np
    import pytest

    from qm_dagster.passes.cache import CacheIndex

    keys = np.array([f"{i:032x}".encode() for i in range(6)], dtype="S32")
    index = CacheIndex.empty(str(tmp_path), "image")
    index.add("p0", ["a", "b"], keys[:4])
    index.add("p1", ["a"], keys[2:6])
    query = keys[[5, 0, 3, 2]]
    before = {fp: index.locate(query, fp) for fp in ("a", "b", "c")}
    assert before["a"].part.tolist() == [1, 0, 1, 1]  # keys 2 and 3: the newer part
    assert before["a"].row.tolist() == [3, 0, 1, 0]
    assert before["b"].part.tolist() == [-1, 0, 0, 0]  # "b" only in part 0
    assert before["c"].part.tolist() == [-1] * 4
    index.seal()
    for fp, located in before.items():
        after = index.locate(query, fp)
        assert after.part.tolist() == located.part.tolist()
        assert after.row.tolist() == located.row.tolist()
    with pytest.raises(RuntimeError, match="sealed"):
        index.add("p2", ["a"], keys[:1])
