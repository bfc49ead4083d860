"""The project's instance storage (dagster.yaml -> qm_dagster.instance_storage): Dagster's SQLite
files, with engines and connections kept; other processes read and write the same files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from qm_dagster import instance_storage

PROJECT = Path(__file__).resolve().parents[1]

OTHER_PROCESS = """
import dagster as dg
with dg.DagsterInstance.get() as instance:
    seen = instance.get_latest_materialization_event(dg.AssetKey("numbers"))
    print(seen.asset_materialization.partition)
    instance.add_dynamic_partitions("versions", ["from-child"])
"""


@pytest.fixture
def project_instance(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance_storage.dispose_engines()
    with dg.DagsterInstance.get() as instance:
        yield instance
    instance_storage.dispose_engines()


versions = dg.DynamicPartitionsDefinition(name="versions")


@dg.asset(partitions_def=versions)
def numbers() -> list[int]:
    return [1, 2, 3]


def test_project_storage_keeps_engines_and_shares_files_with_other_processes(project_instance):
    instance = project_instance
    assert isinstance(instance.get_ref().storage_data.class_name, str)
    assert type(instance._event_storage).__name__ == "EventLogStorage"
    assert type(instance.run_storage).__name__ == "RunStorage"
    instance.add_dynamic_partitions("versions", ["v1", "v2"])
    for version in ("v1", "v2"):
        result = dg.materialize([numbers], instance=instance, partition_key=version)
        assert result.success
    # one engine per file: the index, the runs, the schedules and the two runs' shards
    assert len(instance_storage._engines) <= 6
    assert instance.has_dynamic_partition("versions", "v2")

    child = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=True,
    )
    assert child.stdout.strip() == "v2"
    assert instance.has_dynamic_partition("versions", "from-child")
    records = instance.fetch_materializations(dg.AssetKey("numbers"), limit=10).records
    assert sorted(r.partition_key for r in records) == ["v1", "v2"]


def test_a_forked_child_opens_its_own_connections(project_instance):
    instance = project_instance
    instance.add_dynamic_partitions("versions", ["before"])
    pid = os.fork()
    if pid == 0:  # the child: its inherited pools are dropped; it reads and writes through new ones
        code = 0
        try:
            assert not instance_storage._engines
            assert instance.has_dynamic_partition("versions", "before")
            instance.add_dynamic_partitions("versions", ["child"])
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert instance.has_dynamic_partition("versions", "child")
    assert instance.has_dynamic_partition("versions", "before")


def test_wipe_closes_the_connections_before_deleting_the_files(project_instance):
    instance = project_instance
    instance.add_dynamic_partitions("versions", ["v1"])
    assert dg.materialize([numbers], instance=instance, partition_key="v1").success
    instance.wipe()
    assert not instance.get_runs()
    assert not instance.has_dynamic_partition("versions", "v1")
    instance.add_dynamic_partitions("versions", ["v1"])
    assert dg.materialize([numbers], instance=instance, partition_key="v1").success
    assert len(instance.get_runs()) == 1


DELETE_IN_OTHER_PROCESS = """
import dagster as dg
with dg.DagsterInstance.get() as instance:
    instance.delete_dynamic_partition("versions", "gone")
"""


def test_a_known_partition_is_remembered_briefly_and_a_deletion_here_at_once(
    project_instance, monkeypatch
):
    instance = project_instance
    assert not instance.has_dynamic_partition("versions", "v1")  # absence is never remembered
    instance.add_dynamic_partitions("versions", ["v1", "gone"])
    assert instance.has_dynamic_partition("versions", "v1")
    instance.delete_dynamic_partition("versions", "v1")
    assert not instance.has_dynamic_partition("versions", "v1")

    assert instance.has_dynamic_partition("versions", "gone")
    subprocess.run(
        [sys.executable, "-c", DELETE_IN_OTHER_PROCESS], env=os.environ.copy(), check=True
    )
    assert instance.has_dynamic_partition("versions", "gone")  # remembered, within the window
    monkeypatch.setattr(instance_storage, "KNOWN_PARTITION_SECONDS", 0.0)
    assert not instance.has_dynamic_partition("versions", "gone")


def test_connections_commit_without_waiting_for_the_disk_and_stay_in_wal(project_instance):
    """synchronous=NORMAL on every kept connection (an event no longer waits for an fsync); the
    files stay in WAL mode, which is what makes NORMAL safe against a crashed process."""
    instance = project_instance
    instance.add_dynamic_partitions("versions", ["v1"])
    assert dg.materialize([numbers], instance=instance, partition_key="v1").success
    assert instance_storage._engines
    for engine in instance_storage._engines.values():
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
