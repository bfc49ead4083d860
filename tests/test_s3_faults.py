"""S3 faults on a real moto server behind a faulty proxy (tests/faulty_s3.py): throttling (503
SlowDown) and read timeouts are retried with backoff and the tables equal an undisturbed run's;
the endpoint going away mid-run fails the run with a message naming the object, records
nothing of the failed step as materialized, leaves no partial object, and a rerun after the
endpoint is back gives the undisturbed tables."""

from __future__ import annotations

import boto3
import dagster as dg
import pandas as pd
import pytest
import s3fs

from qm_dagster import load
from qm_dagster.config import Settings
from qm_dagster.importers import ImportSpec, import_version
from tests.faulty_s3 import FaultyS3
from tests.images import real_photos, write_image
from tests.s3server import moto_server

pytestmark = pytest.mark.slow  # a moto server, a proxy and several materializations

BUCKET = "qm-faults"
TABLES = ["dataset/manifest", "data/brightness", "data/sharpness", "data/embeddings"]


@pytest.fixture
def faulty(monkeypatch, tmp_path):
    """A proxy in front of moto, the AWS variables pointing at the proxy, short retries."""
    with moto_server() as upstream:
        proxy = FaultyS3(upstream)
        proxy.start()
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": proxy.url,
            "QM_S3_ATTEMPTS": "3",
            "QM_S3_CONNECT_TIMEOUT": "1",
            "QM_S3_READ_TIMEOUT": "1",
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=upstream).create_bucket(Bucket=BUCKET)
        s3fs.S3FileSystem.clear_instance_cache()
        for name, rgb in real_photos().items():  # small PNGs: one GET each to read
            write_image(tmp_path / "src" / f"{name}.png", rgb[:96, :128])
        import_version(
            ImportSpec(images=str(tmp_path / "src")), f"s3://{BUCKET}/datasets", "v", kind="train"
        )
        yield proxy
        proxy.stop()
        s3fs.S3FileSystem.clear_instance_cache()


def _settings(prefix: str) -> Settings:
    return Settings(
        datasets=f"s3://{BUCKET}/datasets", storage=f"s3://{BUCKET}/{prefix}", workers=1
    )


def _run(settings: Settings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    from definitions import build_definitions

    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    if not instance.has_dynamic_partition("dataset_versions", "v"):
        instance.add_dynamic_partitions("dataset_versions", ["v"])
    selected = [*TABLES, "dataset/annotations", "dataset/data_issues"]
    keys = [dg.AssetKey(t.split("/")) for t in selected]
    return job.execute_in_process(
        instance=instance, partition_key="v", asset_selection=keys, raise_on_error=False
    )


def _tables(settings: Settings) -> dict[str, pd.DataFrame]:
    out = {}
    for table in TABLES:
        frame = load(table, "v", settings).drop(columns=["url"], errors="ignore")
        out[table] = frame.sort_values(frame.columns[0]).reset_index(drop=True)
    return out


def _assert_equal(a: dict, b: dict) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(a[table], b[table], obj=table)


def test_faults_are_retried_or_fail_naming_the_object_and_the_rerun_recovers(faulty):
    images = len(real_photos())
    with dg.DagsterInstance.ephemeral() as instance:
        assert _run(_settings("calm"), instance).success
        calm = _tables(_settings("calm"))

        # throttling and timeouts: retried with backoff, the same tables
        faulty.throttle_first = True  # every request's first attempt: 503 SlowDown
        faulty.stall_first, faulty.stall = r"/datasets/v/images/", 2.5  # image reads time out once
        faulty.forget()
        assert _run(_settings("flaky"), instance).success
        assert faulty.counts["throttled"] > 20 and faulty.counts["stalled"] >= images
        faulty.throttle_first, faulty.stall_first = False, None
        _assert_equal(_tables(_settings("flaky")), calm)

        # the endpoint goes away during the image pass (the manifest reads each image once)
        faulty.go_down_after(r"^GET /qm-faults/datasets/v/images/", images + 1)
        failed = _run(_settings("out"), instance)
        assert not failed.success
        failures = [
            e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        message = failures[0].step_failure_data.error.to_string()
        assert "StorageError" in message and f"s3://{BUCKET}/datasets/v/images/" in message
        assert "did not answer after its retries" in message
        done = {e.asset_key.to_user_string() for e in failed.get_asset_materialization_events()}
        before = {"dataset/manifest", "dataset/data_issues", "dataset/annotations"}
        assert done == before  # the steps that finished before the outage, and nothing else
        faulty.down_pattern = None
        faulty.start()  # the endpoint is back
        fs = s3fs.S3FileSystem()
        assert not fs.exists(f"{BUCKET}/out/data/brightness/v.parquet")
        assert not [p for p in fs.find(f"{BUCKET}/out") if ".tmp" in p]
        assert _run(_settings("out"), instance).success
    _assert_equal(_tables(_settings("out")), calm)
