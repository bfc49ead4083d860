"""End to end, no mocks: a moto S3 server, dagster-webserver and dagster-daemon on 127.0.0.1.
Versions uploaded to the bucket become partitions, metric runs and analysis by themselves
(sensors + declarative automation); results are read back through the webserver's GraphQL API;
then the UI is driven in Debian's Chromium."""

from __future__ import annotations

import json
import os
import re

import boto3
import pytest

from qm_dagster import storage
from qm_dagster.demo import VERSIONS, write_version
from tests.conftest import PROJECT
from tests.e2e import Deployment, deployment, wait_for
from tests.s3server import moto_server

pytestmark = pytest.mark.slow  # servers (moto, dagster-webserver, dagster-daemon)

BUCKET = "qm-e2e"
DATASETS = f"s3://{BUCKET}/datasets"
STORE = f"s3://{BUCKET}/storage"
PHASE_TIMEOUT = 600

PARTITIONS = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      partitionKeys
      assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } }
    }
  }
}"""

MATERIALIZATIONS = """
query ($path: [String!]!, $partitions: [String!]) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetMaterializations(partitions: $partitions, limit: 50) { runId partition } }
  }
}"""

CHECKS = """
query ($path: [String!]!, $check: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $check, limit: 50) {
    runId status
    evaluation { success severity }
    run { tags { key value } }
  }
}"""

RUNS = """
query ($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) {
    ... on Runs { results { runId status jobName stepStats { stepKey status } } }
  }
}"""

ANALYSIS = [
    ["analysis", "drift"],
    ["analysis", "sliced_evaluation"],
    ["analysis", "outliers"],
    ["analysis", "label_errors"],
    ["analysis", "report"],
]


def materialized(stack: Deployment, path: list[str]) -> set[str]:
    node = stack.graphql(PARTITIONS, {"path": path})["assetNodeOrError"]
    return set(node["assetPartitionStatuses"]["materializedPartitions"])


def materializations(stack: Deployment, path: list[str], version: str) -> list[str]:
    node = stack.graphql(MATERIALIZATIONS, {"path": path, "partitions": [version]})
    return [m["runId"] for m in node["assetNodeOrError"]["assetMaterializations"]]


def check_results(stack: Deployment, check: str, version: str) -> list[tuple[str, bool]]:
    """(status, passed) of every execution of ``check`` on ``version``."""
    out = []
    for e in stack.graphql(
        CHECKS, {"path": ["analysis", check.split(":")[0]], "check": check.split(":")[1]}
    )["assetCheckExecutions"]:
        tags = {t["key"]: t["value"] for t in e["run"]["tags"]}
        if tags.get("dagster/partition") == version and e["evaluation"]:
            out.append((e["status"], e["evaluation"]["success"]))
    return out


def analysed(stack: Deployment, version: str) -> bool:
    return all(version in materialized(stack, path) for path in ANALYSIS)


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """Servers up, then a train version and a darker production version uploaded to S3, each
    waited for (bounded) until its analysis is materialized."""
    home = tmp_path_factory.mktemp("dagster_home")
    saved = dict(os.environ)
    with moto_server() as endpoint:
        aws = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        os.environ.update(aws)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        env = {
            **saved,
            **aws,
            "QM_DATASETS": DATASETS,
            "QM_STORAGE": STORE,
            "QM_WORKERS": "1",
            "QM_SENSOR_INTERVAL": "5",
            "QM_EXECUTOR": "in_process",  # no process start per step: the runs are small
            "QM_CHECKS": str(PROJECT / "checks.yaml"),
        }
        try:
            with deployment(env, home) as stack:
                specs = {s.name: s for s in VERSIONS}
                write_version(DATASETS, specs["train"])
                wait_for(lambda: analysed(stack, "train"), PHASE_TIMEOUT, "train's analysis")
                write_version(DATASETS, specs["production"])
                wait_for(
                    lambda: analysed(stack, "production"), PHASE_TIMEOUT, "production's analysis"
                )
                yield stack
        finally:
            os.environ.clear()
            os.environ.update(saved)


def test_versions_flow_to_metrics_analysis_and_checks(landed):
    stack = landed
    node = stack.graphql(PARTITIONS, {"path": ["data", "brightness"]})["assetNodeOrError"]
    assert sorted(node["partitionKeys"]) == ["production", "train"]
    for path in (
        ["dataset", "manifest"],
        ["data", "brightness"],
        ["label", "object_area"],
        ["model", "match"],
    ):
        assert materialized(stack, path) == {"production", "train"}, path
    # Each version's metrics ran once (sensor), its analysis once (automation).
    for version in ("train", "production"):
        assert len(materializations(stack, ["data", "brightness"], version)) == 1
        assert len(materializations(stack, ["analysis", "drift"], version)) == 1
        assert len(materializations(stack, ["analysis", "duplicates"], version)) == 1
    # The train version's checks pass; production fails the brightness drift check (ERROR).
    for check in (
        "drift:no_brightness_drift",
        "sliced_evaluation:detector_ap50_overall",
        "outliers:few_severe_brightness_outliers",
    ):
        assert check_results(stack, check, "train") == [("SUCCEEDED", True)], check
    assert check_results(stack, "drift:no_brightness_drift", "production") == [("FAILED", False)]
    runs = stack.graphql(RUNS, {"tags": [{"key": "qm/trigger", "value": "new version"}]})
    jobs = sorted(r["jobName"] for r in runs["runsOrError"]["results"])
    assert jobs == ["version_metrics_job", "version_metrics_job"]
    report = storage.read_bytes(f"{STORE}/analysis/report/production.html").decode()
    assert "Drift against the reference" in report

    # New predictions for production: only the model assets and their downstream re-run.
    dets = json.loads(storage.read_bytes(f"{DATASETS}/production/predictions/demo_detector.json"))
    storage.write_bytes_atomic(
        f"{DATASETS}/production/predictions/second_detector.json", json.dumps(dets[::2]).encode()
    )

    def predictions_run():
        found = stack.graphql(RUNS, {"tags": [{"key": "qm/trigger", "value": "predictions"}]})
        done = [r for r in found["runsOrError"]["results"] if r["status"] == "SUCCESS"]
        return done[0] if done else None

    run = wait_for(predictions_run, PHASE_TIMEOUT, "the new-predictions run")
    assert run["jobName"] == "model_metrics_job"
    assert {s["stepKey"] for s in run["stepStats"]} == {
        "dataset__predictions",
        "model__matching",
        "model_tables",
    }

    def analysis_followed() -> bool:  # runs are queued one per version: wait for both steps
        sliced = materializations(stack, ["analysis", "sliced_evaluation"], "production")
        report = storage.read_bytes(f"{STORE}/analysis/report/production.html").decode()
        return len(sliced) == 2 and "second_detector" in report

    wait_for(analysis_followed, PHASE_TIMEOUT, "production's analysis to follow the predictions")
    assert len(materializations(stack, ["analysis", "report"], "production")) >= 2
    assert len(materializations(stack, ["data", "brightness"], "production")) == 1  # no decode
    assert len(materializations(stack, ["analysis", "duplicates"], "production")) == 1
    assert len(materializations(stack, ["analysis", "sliced_evaluation"], "train")) == 1
    report = storage.read_bytes(f"{STORE}/analysis/report/production.html").decode()
    assert "second_detector" in report  # the rewritten report evaluates the new model


def test_ui_in_chromium(landed):
    """The asset graph lists the metric assets, a partitioned asset shows the versions, the
    report asset shows its S3 path and how to get a link (no pre-signed URL is stored), and the
    link `qm report` signs opens the report. Screenshots are kept as test artifacts."""
    from tests.browser import artifact, chromium_page

    stack = landed
    with chromium_page() as page:
        page.goto(f"{stack.url}/asset-groups~group%3A%22data%22", wait_until="networkidle")
        page.get_by_text("brightness", exact=True).first.wait_for(timeout=60_000)
        for metric in ("brightness", "sharpness", "uniqueness", "embeddings"):
            assert page.get_by_text(metric, exact=True).count() >= 1, metric
        page.screenshot(path=str(artifact("ui-asset-graph.png")))

        page.goto(f"{stack.url}/assets/data/brightness?view=partitions", wait_until="networkidle")
        page.get_by_text("Materialized (2)").first.wait_for(timeout=60_000)
        for version in ("train", "production"):
            assert page.get_by_text(version, exact=True).count() >= 1, version
        page.screenshot(path=str(artifact("ui-partitions.png")))

        page.goto(
            f"{stack.url}/assets/analysis/report?view=partitions&partition=production",
            wait_until="networkidle",
        )
        page.get_by_text("qm report production").first.wait_for(timeout=60_000)
        assert f"{STORE}/analysis/report/production.html" in page.content()
        assert page.locator("a[href*='Signature']").count() == 0  # no signed link is stored
        page.screenshot(path=str(artifact("ui-report-asset.png")))
        signed = storage.browser_url(storage.report_url(STORE, "production"))  # `qm report`
        assert re.match(
            rf"http://127\.0\.0\.1:\d+/{BUCKET}/storage/analysis/report/production\.html\?",
            signed,
        )
        report = page
        report.goto(signed)
        report.wait_for_load_state("load")
        assert report.locator("#drift + table").count() == 1
        assert "data/brightness" in report.locator("#drift + table").inner_text()
        assert report.locator("#label_errors").count() == 1
        assert report.locator(".gallery img").count() >= 12
        report.screenshot(path=str(artifact("ui-report.png")), full_page=True)
