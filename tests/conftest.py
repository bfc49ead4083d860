"""Shared fixtures: real data from ../shared/data (skipped when absent), settings, Dagster runs."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from qm_dagster.config import Settings

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QM_SHARED_DATA", PROJECT.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """A dataset folder of ../shared/data, or skip the test when it is not there."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def coco_fake_spec(predictions: bool = True, results: str = "fakebbox", model: str = "fake"):
    """The import spec of ../shared/data/coco-val2014-fake100 (COCO labels, its ``results``
    (fakebbox: boxes, fakesegm: masks) as ``model``); skips when the data is absent."""
    from qm_dagster.importers import ImportSpec

    src = shared("coco-val2014-fake100")
    file = src / "results" / f"instances_val2014_{results}100_results.json"
    return ImportSpec(
        images=str(src / "images"),
        format="coco",
        labels=str(src / "instances_val2014_100.json"),
        **(
            {"predictions": str(file), "pred_format": "coco", "model": model} if predictions else {}
        ),
    )


def cartucho_spec():
    """The import spec of ../shared/data/cartucho-voc85 (VOC-style txt boxes, a real detector's
    output as model ``detector``); skips when the data is absent."""
    from qm_dagster.importers import ImportSpec

    src = shared("cartucho-voc85") / "input"
    return ImportSpec(
        images=str(src / "images-optional"),
        format="txt-xyxy",
        labels=str(src / "ground-truth"),
        predictions=str(src / "detection-results"),
        pred_format="txt-xyxy",
        model="detector",
    )


BUCKET = "qm-test"


@pytest.fixture
def s3(monkeypatch):
    """A fresh moto S3 server on 127.0.0.1 with bucket BUCKET, credentials in the environment."""
    import boto3
    import s3fs

    from tests.s3server import moto_server

    with moto_server() as endpoint:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        s3fs.S3FileSystem.clear_instance_cache()
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        datasets=str(tmp_path / "datasets"),
        storage=str(tmp_path / "storage"),
        workers=1,
        chunk_size=8,
    )


# The named slices of the shared demo (qm.yaml's ``slices``)
DEMO_SLICES = {
    "dark": "`data/brightness` < 0.3",
    "small_objects": {"level": "object", "where": "`label/relative_area` < 0.01"},
}


# The models whose predicted objects get the object pixel metrics (qm.yaml's prediction_pixels)
DEMO_PIXEL_MODELS = ["demo_detector"]


@dataclass(frozen=True)
class Demo:
    """The demo's train and production versions, materialized once per session with the shipped
    checks.yaml, DEMO_SLICES and DEMO_PIXEL_MODELS; tests read it (and may add versions), never change it."""

    settings: Settings
    config: Path  # the qm.yaml holding DEMO_SLICES
    runs: dict[str, dg.ExecuteInProcessResult]


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    from qm_dagster.demo import write_demo

    root = tmp_path_factory.mktemp("demo")
    config = root / "qm.yaml"
    config.write_text(json.dumps({"slices": DEMO_SLICES, "prediction_pixels": DEMO_PIXEL_MODELS}))
    settings = dataclasses.replace(
        Settings.load({"QM_CONFIG": str(config)}),
        datasets=str(root / "datasets"),
        storage=str(root / "storage"),
        workers=1,
        chunk_size=8,
        checks=str(PROJECT / "checks.yaml"),
    )
    write_demo(settings.datasets)
    runs = {v: materialize_version(settings, v) for v in ("train", "production")}
    return Demo(settings, config, runs)


def materialize_version(
    settings: Settings, version: str, selection=None
) -> dg.ExecuteInProcessResult:
    """Materialize (a selection of) the graph for one version through Dagster."""
    from definitions import build_definitions

    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dataset_versions", [version])
        return job.execute_in_process(
            instance=instance, partition_key=version, asset_selection=selection
        )


@pytest.fixture(autouse=True)
def _no_stale_defs_state_storage():
    """Dagster keeps the entered instance's defs-state storage in a context variable, reset when
    the instance's context exits. An exit that runs late (a suspended context manager collected
    during a later test) restores a dead instance's storage, and every later Definitions
    resolution then fails. So: collect such leftovers first, then start each test without one
    (tests that need an instance enter their own)."""
    from dagster._core.storage.defs_state.base import _current_storage

    gc.collect()
    _current_storage.set(None)
    yield
