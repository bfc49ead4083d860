"""The boundary sensors called directly (build_sensor_context) against real folders and a real
Dagster instance: new, half-written, invalid, duplicate and re-uploaded versions; new, unchanged
and changed predictions; cursor round-trips and resets; flat listing cost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from assets.sensors import recorded_metadata
from qm_dagster.dataset import DatasetRoot
from qm_dagster.watch import scan_versions
from resources.dataset import QmResource
from tests.images import checkerboard, commit, write_image

PARTITIONS = "dataset_versions"


def tiny_version(root: Path, name: str, models: dict[str, float] | None = None, **meta) -> Path:
    """One 16x16 image with one box, optional predictions per model (one box at ``score``)."""
    folder = root / name
    write_image(folder / "images" / "a.png", checkerboard())
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 8, 8],
                "area": 64,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (folder / "annotations.json").write_text(json.dumps(coco))
    for model, score in (models or {}).items():
        write_predictions(folder, model, score)
    commit(folder, **meta)
    return folder


def write_predictions(folder: Path, model: str, score: float) -> None:
    (folder / "predictions").mkdir(exist_ok=True)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "score": score}]
    (folder / "predictions" / f"{model}.json").write_text(json.dumps(dets))


def touch_later(path: Path, seconds: float = 5.0) -> None:
    """Move a file's mtime forward, as a later upload would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + int(seconds * 1e9)))


@pytest.fixture
def defs(settings):
    from definitions import build_definitions

    return build_definitions(settings)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def tick(defs, instance, settings, name, cursor=None):
    sensor = defs.resolve_sensor_def(name)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"qm": QmResource(datasets=settings.datasets, storage=settings.storage)},
    )
    return sensor(context)


def apply(instance, result) -> None:
    """What the daemon does with a sensor result's partition requests."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(PARTITIONS, list(request.partition_keys))


def requested(result) -> list[str]:
    return sorted(r.partition_key for r in result.run_requests or [])


def materialize(defs, instance, version: str, keys: list[list[str]]) -> None:
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, partition_key=version, asset_selection=[dg.AssetKey(k) for k in keys]
    )
    assert result.success


def test_new_half_written_and_invalid_versions(defs, instance, settings):
    root = Path(settings.datasets)
    tiny_version(root, "v1")
    (root / "v2" / "images").mkdir(parents=True)  # being uploaded: no version.json yet
    (root / "not a name!").mkdir()
    (root / "stray.txt").write_text("not a folder")

    first = tick(defs, instance, settings, "new_versions_sensor")
    assert requested(first) == ["v1"]
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [["v1"]]
    assert first.run_requests[0].tags["qm/trigger"] == "new version"
    apply(instance, first)

    second = tick(defs, instance, settings, "new_versions_sensor", first.cursor)
    assert requested(second) == [] and not second.dynamic_partitions_requests

    commit(root / "v2", kind="production", reference="v1")  # the upload finishes
    third = tick(defs, instance, settings, "new_versions_sensor", second.cursor)
    assert requested(third) == ["v2"]
    assert [list(r.partition_keys) for r in third.dynamic_partitions_requests] == [["v2"]]


def test_reupload_runs_again_and_same_content_does_not(defs, instance, settings):
    root = Path(settings.datasets)
    tiny_version(root, "v1")
    first = tick(defs, instance, settings, "new_versions_sensor")
    apply(instance, first)
    again = tick(defs, instance, settings, "new_versions_sensor", first.cursor)
    assert requested(again) == []  # seen twice, run once

    commit(root / "v1", description="re-uploaded")  # producer rewrites version.json last
    touch_later(root / "v1" / "version.json")
    reupload = tick(defs, instance, settings, "new_versions_sensor", again.cursor)
    assert requested(reupload) == ["v1"]
    assert reupload.run_requests[0].tags["qm/trigger"] == "re-upload"
    assert reupload.run_requests[0].run_key != first.run_requests[0].run_key
    assert not reupload.dynamic_partitions_requests  # already a partition


def test_cursor_round_trip_and_reset(defs, instance, settings):
    root = Path(settings.datasets)
    tiny_version(root, "v1")
    tiny_version(root, "v2")
    first = tick(defs, instance, settings, "new_versions_sensor")
    apply(instance, first)
    state = json.loads(first.cursor)
    assert sorted(state["seen"]) == ["v1", "v2"]
    assert json.loads(json.dumps(state)) == state
    assert requested(tick(defs, instance, settings, "new_versions_sensor", first.cursor)) == []

    # The runs happen: dataset/manifest records the version.json signature it read.
    for v in ("v1", "v2"):
        materialize(defs, instance, v, [["dataset", "manifest"]])
    # A reset cursor (or a fresh daemon) must not run computed versions again...
    reset = tick(defs, instance, settings, "new_versions_sensor", None)
    assert requested(reset) == []
    # ...but a version re-uploaded while the cursor was gone is noticed.
    commit(root / "v2", description="new content")
    touch_later(root / "v2" / "version.json")
    reset_again = tick(defs, instance, settings, "new_versions_sensor", None)
    assert requested(reset_again) == ["v2"]


def test_duplicate_partition_is_not_added_twice(defs, instance, settings):
    root = Path(settings.datasets)
    tiny_version(root, "v1")
    instance.add_dynamic_partitions(PARTITIONS, ["v1"])  # registered by hand (qm / UI)
    result = tick(defs, instance, settings, "new_versions_sensor")
    assert requested(result) == ["v1"]  # never computed: run it
    assert not result.dynamic_partitions_requests


@pytest.mark.parametrize("count", [10, 1000])
def test_listing_cost_stays_flat(tmp_path, count):
    root = tmp_path / "root"
    for i in range(count):
        (root / f"v{i:04d}").mkdir(parents=True)
        (root / f"v{i:04d}" / "version.json").write_text("{}")
    dataset = DatasetRoot(str(root))
    first = scan_versions(dataset, {}, 0, window=50)
    assert len(first.landed) == count and first.stats == count  # the first look sees all
    seen = {**first.landed}
    steady = scan_versions(dataset, seen, first.position, window=50)
    assert steady.landed == {} and steady.stats == min(50, count)
    # The window rotates: every known version is re-checked within ceil(count / 50) ticks.
    checked, position = set(), 0
    for _ in range(-(-count // 50)):
        scan = scan_versions(dataset, seen, position, window=50)
        checked |= set(scan.unchanged)
        position = scan.position
    assert len(checked) == count


def test_new_unchanged_and_changed_predictions(defs, instance, settings):
    root = Path(settings.datasets)
    folder = tiny_version(root, "v1", {"det_a": 0.9})
    instance.add_dynamic_partitions(PARTITIONS, ["v1"])

    # Not computed yet: the version's own metrics run will read the files.
    early = tick(defs, instance, settings, "new_predictions_sensor")
    assert requested(early) == [] and json.loads(early.cursor)["seen"] == {}

    # dataset/predictions reads the stored manifest and categories, as after a metrics run
    tables = [["dataset", "manifest"], ["dataset", "categories"], ["dataset", "predictions"]]
    materialize(defs, instance, "v1", tables)
    unchanged = tick(defs, instance, settings, "new_predictions_sensor", early.cursor)
    assert requested(unchanged) == []

    write_predictions(folder, "det_b", 0.7)  # a new model lands
    new = tick(defs, instance, settings, "new_predictions_sensor", unchanged.cursor)
    assert requested(new) == ["v1"]
    assert new.run_requests[0].tags["qm/models"] == "det_b"
    assert requested(tick(defs, instance, settings, "new_predictions_sensor", new.cursor)) == []

    write_predictions(folder, "det_a", 0.55555)  # an existing model's file changes
    touch_later(folder / "predictions" / "det_a.json")
    changed = tick(defs, instance, settings, "new_predictions_sensor", new.cursor)
    assert requested(changed) == ["v1"]
    assert changed.run_requests[0].tags["qm/models"] == "det_a"
    assert changed.run_requests[0].run_key != new.run_requests[0].run_key

    # Cursor reset: compared with what dataset/predictions last read (det_a only, old file).
    reset = tick(defs, instance, settings, "new_predictions_sensor", None)
    assert requested(reset) == ["v1"]
    materialize(defs, instance, "v1", [["dataset", "predictions"]])
    assert requested(tick(defs, instance, settings, "new_predictions_sensor", None)) == []


def test_new_class_probabilities_of_a_classification_version(defs, instance, settings, tmp_path):
    """A classification version's probability CSV is a model's predictions file: a new one
    asks for the model metrics run."""
    import cv2
    import numpy as np

    from qm_dagster.importers import import_classification

    for i, label in enumerate(["cat", "dog", "dog"]):
        (tmp_path / "src" / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(tmp_path / "src" / label / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8)
        )
    import_classification(str(tmp_path / "src"), settings.datasets, "c1")
    instance.add_dynamic_partitions(PARTITIONS, ["c1"])
    materialize(defs, instance, "c1", [["dataset", "manifest"], ["dataset", "categories"]])
    materialize(defs, instance, "c1", [["dataset", "predictions"]])
    first = tick(defs, instance, settings, "new_predictions_sensor")
    assert requested(first) == []
    probs = "file_name,cat,dog\ncat/0.png,0.9,0.1\ndog/1.png,0.2,0.8\n"
    (Path(settings.datasets) / "c1" / "predictions").mkdir()
    (Path(settings.datasets) / "c1" / "predictions" / "clf.csv").write_text(probs)
    new = tick(defs, instance, settings, "new_predictions_sensor", first.cursor)
    assert requested(new) == ["c1"] and new.run_requests[0].tags["qm/models"] == "clf"
    assert new.run_requests[0].job_name == "class_metrics_job"


def test_predictions_sensor_targets_only_model_assets(defs):
    job = defs.resolve_job_def("model_metrics_job")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert "dataset/predictions" in keys and "model/match" in keys
    assert all(k == "dataset/predictions" or k.startswith("model/") for k in keys)
    assert not keys & {"dataset/class_predictions", "model/class_confidence"}
    job = defs.resolve_job_def("class_metrics_job")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {
        "dataset/predictions",
        "dataset/class_predictions",
        "model/class_confidence",
        "model/class_margin",
        "model/class_entropy",
        "model/class_correct",
        "model/label_quality",
    }
    sensor = defs.resolve_sensor_def("new_predictions_sensor")
    assert {t.job_name for t in sensor.targets} == {"model_metrics_job", "class_metrics_job"}
    assert defs.resolve_sensor_def("new_versions_sensor").job_name == "version_metrics_job"


def _everything(defs, instance, version: str) -> None:
    keys = [k.path for k in defs.resolve_asset_graph().get_all_asset_keys()]
    materialize(defs, instance, version, keys)


@pytest.mark.slow
def test_reference_landing_after_its_dependant_reruns_the_dependant(defs, instance, settings):
    """``cur`` (reference ``ref``) is analysed before ``ref`` exists: its drift is empty. When
    ``ref``'s tables land, reference_sensor runs cur's drift, duplicates and report, which then
    see the reference; it asks nothing more until ``ref`` is materialized again. ``fresh`` (also
    on ``ref``) has never been analysed: its first analysis is the automation's, not a second
    run racing it."""
    root = Path(settings.datasets)
    tiny_version(root, "ref", kind="train")
    tiny_version(root, "cur", kind="production", reference="ref")
    tiny_version(root, "fresh", kind="production", reference="ref")
    instance.add_dynamic_partitions(PARTITIONS, ["ref", "cur", "fresh"])
    _everything(defs, instance, "cur")
    drift = dg.AssetKey(["analysis", "drift"])
    assert recorded_metadata(instance, drift, "cur", "reference materialized") is False

    first = tick(defs, instance, settings, "reference_sensor")
    assert not first.run_requests  # cur's own tables landed; nothing names cur as reference
    _everything(defs, instance, "ref")
    second = tick(defs, instance, settings, "reference_sensor", first.cursor)
    assert requested(second) == ["cur"]
    assert second.run_requests[0].tags["qm/reference"] == "ref"

    job = defs.resolve_job_def("reference_dependants_job")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
        "analysis/drift",
        "analysis/duplicates",
        "analysis/report",
        "reference/dataset/manifest",
        "reference/data/embeddings",
        "reference/analysis/quality_table/image",
        "reference/analysis/quality_table/object",
        "reference/analysis/quality_table/prediction",
    }
    assert job.execute_in_process(instance=instance, partition_key="cur").success
    assert recorded_metadata(instance, drift, "cur", "reference") == "ref"
    assert recorded_metadata(instance, drift, "cur", "reference materialized") is None

    third = tick(defs, instance, settings, "reference_sensor", second.cursor)
    assert not third.run_requests  # cur's dependants are newer than ref's tables
    tables = [["analysis", "quality_table", level] for level in ("image", "object", "prediction")]
    materialize(defs, instance, "ref", tables)
    fourth = tick(defs, instance, settings, "reference_sensor", third.cursor)
    assert requested(fourth) == ["cur"]  # ref re-materialized: cur's drift is stale again
