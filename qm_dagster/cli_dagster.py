"""The part of the CLI that drives Dagster (the engine itself never imports dagster)."""

from __future__ import annotations

import fnmatch
import os
import threading
import uuid
from pathlib import Path

import dagster as dg

from qm_dagster.config import DEFAULT_HOME, Settings
from qm_dagster.dataset import check_version_name
from qm_dagster.errors import QmError
from qm_dagster.passes.progress import PREFIX

PARTITIONS = "dataset_versions"
_SHOWN = {
    dg.DagsterEventType.STEP_START: "started",
    dg.DagsterEventType.STEP_SUCCESS: "done",
    dg.DagsterEventType.STEP_FAILURE: "FAILED",
    dg.DagsterEventType.ASSET_MATERIALIZATION: "materialized",
}


def dagster_home(project: Path) -> Path:
    """``DAGSTER_HOME``, defaulting to ``<project>/.qm/dagster_home`` with the project's dagster.yaml linked in."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        return Path(home)
    path = project / DEFAULT_HOME / "dagster_home"
    path.mkdir(parents=True, exist_ok=True)
    link = path / "dagster.yaml"
    if not link.exists() and (project / "dagster.yaml").is_file():
        link.symlink_to(os.path.relpath(project / "dagster.yaml", path))
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def select_keys(all_keys: list[dg.AssetKey], pattern: str) -> list[dg.AssetKey]:
    """Asset keys whose ``a/b`` form matches the glob ``pattern``."""
    keys = [k for k in all_keys if fnmatch.fnmatchcase(k.to_user_string(), pattern)]
    if not keys:
        known = ", ".join(sorted(k.to_user_string() for k in all_keys))
        raise QmError(f"--select {pattern!r} matches no asset; assets are: {known}")
    return keys


def materialize_version(project: Path, settings: Settings, version: str, pattern: str) -> bool:
    """Add the partition if needed and materialize the selection for it, printing each step."""
    check_version_name(version)
    from definitions import build_definitions  # the project's composition root

    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    keys = select_keys(sorted(defs.resolve_asset_graph().get_all_asset_keys()), pattern)
    home = dagster_home(project)
    with dg.DagsterInstance.get() as instance:
        if not instance.has_dynamic_partition(PARTITIONS, version):
            instance.add_dynamic_partitions(PARTITIONS, [version])
        run_id = str(uuid.uuid4())
        print(f"run {run_id} in {home}: {len(keys)} assets for version {version}", flush=True)
        stop = threading.Event()
        watcher = threading.Thread(target=_print_progress, args=(instance, run_id, stop))
        watcher.start()
        try:
            result = job.execute_in_process(
                instance=instance,
                partition_key=version,
                asset_selection=keys,
                run_id=run_id,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                tags={"qm/launched_by": "cli"},
            )
        finally:
            stop.set()
            watcher.join()
    print(
        f"{'SUCCESS' if result.success else 'FAILURE'}: {len(result.get_asset_materialization_events())} "
        f"materializations; storage {settings.storage}",
        flush=True,
    )
    return result.success


def _print_progress(instance: dg.DagsterInstance, run_id: str, stop: threading.Event) -> None:
    seen = 0
    while True:
        finished = stop.wait(0.5)
        records = instance.all_logs(run_id)
        for record in records[seen:]:
            event = record.dagster_event
            if event is None and record.user_message.startswith(PREFIX):
                print(f"  {record.user_message}", flush=True)
            if event is None or event.event_type not in _SHOWN:
                continue
            what = _SHOWN[event.event_type]
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                print(f"  {what} {event.asset_key.to_user_string()}", flush=True)
            else:
                print(f"step {event.step_key}: {what}", flush=True)
        seen = len(records)
        if finished:
            return
