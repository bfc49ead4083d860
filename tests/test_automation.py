"""Declarative automation (analysis follows metrics and predictions), the production drift
schedule, and the alert sensors posting to a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import typing
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from assets.alerts import build_alert_sensors
from qm_dagster.config import Settings
from resources.dataset import QmResource
from tests.test_sensors import materialize, tiny_version, write_predictions

PARTITIONS = "dataset_versions"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def tick_instance(instance, monkeypatch):
    """``instance`` answering dynamic-partition reads from a cache cleared on every add, as the
    daemon's tick does (its queryer caches them). Dagster's condition tester passes the bare
    instance, which costs one SQLite query per condition node: ~50 s a tick here."""
    read, add, known = instance.get_dynamic_partitions, instance.add_dynamic_partitions, {}

    def get_dynamic_partitions(partitions_def_name: str):
        if partitions_def_name not in known:
            known[partitions_def_name] = read(partitions_def_name)
        return known[partitions_def_name]

    def add_dynamic_partitions(partitions_def_name: str, partition_keys):
        known.clear()
        return add(partitions_def_name, partition_keys)

    monkeypatch.setattr(instance, "get_dynamic_partitions", get_dynamic_partitions)
    monkeypatch.setattr(instance, "add_dynamic_partitions", add_dynamic_partitions)
    return instance


def requested(defs, result, version: str) -> set[str]:
    """Asset keys the automation tick requested for ``version``."""
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    return {
        k.to_user_string()
        for k in keys
        if result.get_num_requested(k) and version in result.get_requested_partitions(k)
    }


@pytest.mark.slow
def test_analysis_follows_new_metrics_and_new_predictions(settings, tick_instance):
    instance = tick_instance
    from definitions import build_definitions

    settings = dataclasses.replace(settings, checks="")
    defs = build_definitions(settings)
    folder = tiny_version(Path(settings.datasets), "v1", {"det_a": 0.9})
    instance.add_dynamic_partitions(PARTITIONS, ["v1"])
    start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    aliases = requested(defs, start, "v1")
    assert aliases and all(k.startswith("reference/") for k in aliases)  # nothing else yet
    assert start.total_requested == len(aliases)
    materialize(defs, instance, "v1", [k.split("/") for k in aliases])
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
    assert quiet.total_requested == 0  # an alias is requested once, not on every tick

    metrics = defs.resolve_job_def("version_metrics_job")
    assert metrics.execute_in_process(instance=instance, partition_key="v1").success
    after_metrics = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=quiet.cursor
    )
    analysis = {
        k.to_user_string()
        for k in defs.resolve_job_def("analysis_job").asset_layer.selected_asset_keys
    }
    # every analysis asset, no metric, and the aliases are not asked again
    assert requested(defs, after_metrics, "v1") == analysis - aliases
    run = defs.resolve_job_def("analysis_job").execute_in_process(
        instance=instance, partition_key="v1"
    )
    assert run.success
    settled = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=after_metrics.cursor
    )
    assert settled.total_requested == 0

    write_predictions(folder, "det_b", 0.4)
    model = defs.resolve_job_def("model_metrics_job")
    assert model.execute_in_process(instance=instance, partition_key="v1").success
    after_predictions = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=settled.cursor
    )
    keys = requested(defs, after_predictions, "v1")
    assert {"analysis/sliced_evaluation", "analysis/label_errors", "analysis/report"} <= keys
    assert "analysis/duplicates" not in keys  # reads pixels-derived tables only: unchanged
    assert not any(k.startswith(("data/", "label/", "model/", "dataset/")) for k in keys)


def test_production_drift_schedule_picks_newest_production_per_reference(settings, instance):
    from definitions import build_definitions

    root = Path(settings.datasets)
    tiny_version(root, "train", kind="train")
    tiny_version(root, "prod-jan", kind="production", reference="train", created="2026-01-01")
    tiny_version(root, "prod-feb", kind="production", reference="train", created="2026-02-01")
    tiny_version(root, "other-ref", kind="train")
    tiny_version(root, "prod-b", kind="production", reference="other-ref", created="2025-05-05")
    tiny_version(root, "val", kind="validation", reference="train")
    (root / "prod-late").mkdir()  # incomplete: no version.json
    names = ["train", "prod-jan", "prod-feb", "other-ref", "prod-b", "val", "prod-late"]
    instance.add_dynamic_partitions(PARTITIONS, names)

    defs = build_definitions(dataclasses.replace(settings, drift_schedule="30 5 * * 1"))
    schedule = defs.resolve_schedule_def("production_drift_schedule")
    assert schedule.cron_schedule == "30 5 * * 1"
    assert schedule.job_name == "production_drift_job"
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 30, 5, 30),
        resources={"qm": QmResource(datasets=settings.datasets, storage=settings.storage)},
    )
    requests = schedule(context)
    assert sorted(r.partition_key for r in requests) == ["prod-b", "prod-feb"]
    assert {r.run_key for r in requests} == {
        "drift:prod-b:2026-11-30T05:30",
        "drift:prod-feb:2026-11-30T05:30",
    }
    job = defs.resolve_job_def("production_drift_job")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
        "analysis/drift",
        "analysis/report",
        "reference/analysis/quality_table/image",  # a reference re-materialized since is seen
        "reference/analysis/quality_table/object",
        "reference/analysis/quality_table/prediction",
    }


def test_default_statuses(settings):
    from definitions import build_definitions

    defs = build_definitions(settings)
    running = dg.DefaultSensorStatus.RUNNING
    for name in ("new_versions_sensor", "new_predictions_sensor", "analysis_automation_sensor"):
        assert defs.resolve_sensor_def(name).default_status == running
    for name in ("run_failure_alert_sensor", "check_failure_alert_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.STOPPED
    alerting = build_definitions(dataclasses.replace(settings, alert_webhook="http://x/hook"))
    assert alerting.resolve_sensor_def("check_failure_alert_sensor").default_status == running
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        if key.path[0] in ("analysis", "reference"):
            assert node.automation_condition is not None, key
        else:
            assert node.automation_condition is None, key


class _Hook(http.server.BaseHTTPRequestHandler):
    received: typing.ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Hook.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Hook.received
    server.shutdown()


def test_check_failure_alert_posts_failed_checks(webhook, instance):
    url, received = webhook
    versions = dg.DynamicPartitionsDefinition(name=PARTITIONS)

    @dg.asset(
        partitions_def=versions,
        check_specs=[dg.AssetCheckSpec("no_drift", asset="drifty")],
    )
    def drifty():
        yield dg.Output(1)
        yield dg.AssetCheckResult(
            check_name="no_drift",
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"measured": "KS 0.9 on brightness"},
        )

    instance.add_dynamic_partitions(PARTITIONS, ["prod"])
    result = dg.materialize([drifty], instance=instance, partition_key="prod")
    assert result.success  # a failed non-blocking check does not fail the run
    success_event = next(
        e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS
    )
    _, check_sensor = build_alert_sensors(url, 30)
    context = dg.build_run_status_sensor_context(
        sensor_name="check_failure_alert_sensor",
        dagster_event=success_event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    )
    check_sensor(context)
    assert len(received) == 1
    body = received[0]
    assert body["status"] == "SUCCESS" and body["partition"] == "prod"
    assert body["failed_checks"] == [
        {
            "asset": "drifty",
            "check": "no_drift",
            "severity": "ERROR",
            "partition": "prod",
            "description": None,
            "measured": "KS 0.9 on brightness",
        }
    ]
    assert "no_drift" in body["text"]


def test_run_failure_alert_posts(webhook, instance):
    url, received = webhook

    @dg.asset
    def broken():
        raise ValueError("annotations.json: images[3].width: expected a number")

    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    failure_sensor, _ = build_alert_sensors(url, 30)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    failure_sensor(context)
    assert len(received) == 1 and received[0]["status"] == "FAILURE"
    assert received[0]["run_id"] == result.run_id


def test_settings_from_environment():
    loaded = Settings.load(
        {
            "QM_DRIFT_SCHEDULE": "0 */6 * * *",
            "QM_SENSOR_INTERVAL": "5",
            "QM_ALERT_WEBHOOK": "http://h",
        }
    )
    assert loaded.drift_schedule == "0 */6 * * *"
    assert loaded.sensor_interval == 5 and loaded.alert_webhook == "http://h"


def test_executor_setting(settings):
    from definitions import build_definitions
    from qm_dagster.errors import QmError

    defs = build_definitions(dataclasses.replace(settings, executor="in_process"))
    assert defs.resolve_job_def("version_metrics_job").executor_def.name == "in_process"
    assert build_definitions(settings).resolve_job_def("analysis_job").executor_def.name == (
        "multiprocess"
    )
    with pytest.raises(QmError, match="executor"):
        Settings.load({"QM_EXECUTOR": "threads"})
