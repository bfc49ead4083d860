"""The Dagster UI's Plots tab: headline numbers are numeric metadata on every materialization,
so two versions' materializations read back through one instance give a trend."""

from __future__ import annotations

import dataclasses
import shutil

import dagster as dg
import pytest

from qm_dagster import load

ASSETS = [["analysis", "sliced_evaluation"], ["analysis", "drift"], ["analysis", "outliers"]]


@pytest.fixture(scope="module")
def recorded(demo, tmp_path_factory):
    """The demo's train and production analysis materialized again into one instance (on a
    copy of the demo's storage: the shared demo is never changed)."""
    from definitions import build_definitions

    storage = tmp_path_factory.mktemp("plots") / "storage"
    shutil.copytree(demo.settings.storage, storage)
    settings = dataclasses.replace(demo.settings, storage=str(storage))
    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    keys = [dg.AssetKey(path) for path in ASSETS]
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("dataset_versions", ["train", "production"])
        for version in ("train", "production"):
            result = job.execute_in_process(
                instance=instance, partition_key=version, asset_selection=keys
            )
            assert result.success
        yield instance, settings


def _numbers(instance: dg.DagsterInstance, path: list[str]) -> dict[str, dict[str, float]]:
    """{version: {label: value}} of the numeric metadata of each materialization of ``path``."""
    records = instance.fetch_materializations(dg.AssetKey(path), limit=10).records
    out = {}
    for record in records:
        meta = record.asset_materialization.metadata
        out[record.partition_key] = {
            label: value.value
            for label, value in meta.items()
            if isinstance(value, dg.FloatMetadataValue | dg.IntMetadataValue)
        }
    return out


def test_headline_numbers_are_numeric_on_both_versions(recorded):
    instance, settings = recorded
    sliced = _numbers(instance, ["analysis", "sliced_evaluation"])
    assert set(sliced) == {"train", "production"}
    for version, numbers in sliced.items():
        table = load("analysis/sliced_evaluation", version, settings)
        overall = table[(table.metric == "all") & (table.iou_type == "bbox")].set_index("model")
        for stat in ("AP", "AP50", "AR100"):
            assert numbers[f"{stat} demo_detector"] == pytest.approx(
                overall.loc["demo_detector", stat]
            )
    assert sliced["production"]["AP50 demo_detector"] < sliced["train"]["AP50 demo_detector"]

    outliers = _numbers(instance, ["analysis", "outliers"])
    for version, numbers in outliers.items():
        table = load("analysis/outliers", version, settings)
        images = load("analysis/quality_table/image", version, settings)
        flagged = table[table.level == "image"].key.nunique()
        assert numbers["outlier share image"] == pytest.approx(flagged / len(images))
        assert numbers["severe"] == (table.severity == "severe").sum()

    drift = _numbers(instance, ["analysis", "drift"])
    assert "drift share image" not in drift["train"]  # no reference: nothing tested
    table = load("analysis/drift", "production", settings)
    image = table[table.level == "image"]
    assert drift["production"]["drift share image"] == pytest.approx(
        (image.verdict == "drift").mean()
    )
    assert drift["production"]["drift share image"] > 0  # the darker, blurrier camera


def test_tables_are_dagster_tables_with_schemas(recorded):
    instance, _ = recorded
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["analysis", "sliced_evaluation"]),
            asset_partitions=["production"],
        ),
        limit=1,
    ).records
    overall = record.asset_materialization.metadata["overall"]
    assert isinstance(overall, dg.TableMetadataValue)
    types = {c.name: c.type for c in overall.schema.columns}
    assert types["model"] == "string" and types["AP50"] == "float"
    assert overall.records[0].data["model"] == "demo_detector"
