"""The part of the CLI that drives Dagster (the engine itself never imports dagster)."""

from __future__ import annotations

import fcntl
import fnmatch
import gc
import importlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import dagster as dg

from qm_dagster import storage
from qm_dagster.config import DEFAULT_HOME, Settings
from qm_dagster.dataset import check_version_name
from qm_dagster.errors import QmError
from qm_dagster.passes.progress import PREFIX

PARTITIONS = "dataset_versions"
# The analysis steps import these at first use: ~1.5 s of one core at 10k images (scikit-learn
# with SciPy's statistics, faiss, matplotlib). Steps that run in this process import them while
# the image pass's workers compute, when this process only waits on them.
ANALYSIS_MODULES = (
    "sklearn.cluster",
    "sklearn.ensemble",
    "scipy.sparse.csgraph",
    "faiss",
    "qm_dagster.medcouple",  # numba and its compiled cache: ~0.4 s the outliers step waited on
)  # not matplotlib: the report's charts are drawn by the fork server's workers
PASS_STEP = "image_pass"

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


def is_stored(graph, key: dg.AssetKey, base: str, version: str) -> bool:
    """Whether the IO manager has ``key``'s partition ``version`` (a table, or an alias's
    pointer) under the storage ``base``."""
    from resources.io_manager import ALIAS

    path = "/".join(key.path)
    if (graph.get(key).metadata or {}).get(ALIAS):
        return storage.exists(storage.join(base, path, f"{version}.json"))
    return storage.exists(storage.asset_url(base, path, version))


def missing_upstream(graph, keys: list[dg.AssetKey], base: str, version: str) -> list[dg.AssetKey]:
    """Upstream assets of ``keys``, outside them, whose partition is not stored: without them
    the selection cannot load its inputs."""
    selected, todo, missing = set(keys), list(keys), []
    while todo:
        for parent in sorted(graph.get(todo.pop()).parent_keys):
            if parent not in selected and not is_stored(graph, parent, base, version):
                selected.add(parent)
                missing.append(parent)
                todo.append(parent)
    return sorted(missing)


IN_PROGRESS = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@contextmanager
def _locked(path: Path, busy: str = "") -> Iterator[None]:
    """An exclusive lock on ``path`` for the block (``busy`` is printed when it has to wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy:
                print(busy, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def version_lock(home: Path, version: str):
    """One ``qm materialize`` of a version at a time on this machine, taken before the
    instance is opened (a waiting process holds no database connection)."""
    busy = f"waiting: another qm materialize of {version} is running"
    return _locked(home / "locks" / f"{version}.lock", busy)


def wait_for_runs(instance: dg.DagsterInstance, version: str) -> None:
    """Wait for the version's runs in progress (the daemon's, whose queue keeps one per
    version: dagster.yaml); runs whose worker died are marked failed instead of waited for."""
    from assets.dead_runs import mark_dead_runs

    said = False
    while True:
        mark_dead_runs(instance)
        running = instance.get_runs(
            dg.RunsFilter(tags={"dagster/partition": version}, statuses=IN_PROGRESS)
        )
        if not running:
            return
        if not said:
            print(f"waiting: run {running[0].run_id} of {version} is in progress", flush=True)
            said = True
        time.sleep(1.0)


def materialize_version(
    project: Path, settings: Settings, version: str, pattern: str, debug: bool = False
) -> bool:
    """Add the partition if needed and materialize the selection for it (with whatever of its
    upstream is not stored yet), printing each step; a failed step prints its error's message
    (``debug``: the whole traceback)."""
    check_version_name(version)
    from definitions import build_definitions  # the project's composition root

    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    keys = select_keys(sorted(graph.get_all_asset_keys()), pattern)
    added = missing_upstream(graph, keys, settings.storage, version)
    if added:
        names = ", ".join(k.to_user_string() for k in added)
        print(f"also materializing {len(added)} upstream assets not stored for {version}: {names}")
    keys = sorted({*keys, *added})
    home = dagster_home(project)
    with version_lock(home, version), _opened(home) as instance:
        wait_for_runs(instance, version)
        if not instance.has_dynamic_partition(PARTITIONS, version):
            instance.add_dynamic_partitions(PARTITIONS, [version])
        run_id = str(uuid.uuid4())
        print(f"run {run_id} in {home}: {len(keys)} assets for version {version}", flush=True)
        stop = threading.Event()
        warm = ANALYSIS_MODULES if any(k.path[0] == "analysis" for k in keys) else ()
        watcher = threading.Thread(target=_print_progress, args=(instance, run_id, stop, warm))
        watcher.start()
        settle_heap()
        try:
            result = job.execute_in_process(
                instance=instance,
                partition_key=version,
                asset_selection=keys,
                run_id=run_id,
                raise_on_error=False,
                # failures are printed below, as messages; warnings by the progress watcher
                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
                tags={"qm/launched_by": "cli"},
            )
        finally:
            stop.set()
            watcher.join()
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            text = error.to_string() if debug else _innermost(error)
            print(f"step {event.step_key} failed: {text}", flush=True)
    print(
        f"{'SUCCESS' if result.success else 'FAILURE'}: {len(result.get_asset_materialization_events())} "
        f"materializations; storage {settings.storage}"
        + ("" if result.success or debug else " (--debug shows the tracebacks)"),
        flush=True,
    )
    return result.success


def settle_heap() -> None:
    """Put every object alive now out of the cyclic collector's reach, and collect young objects
    10x less often. Its full collections scan every tracked object, and after Dagster's and the
    definitions' imports there are ~0.5 million of them: at 10k images ~8 full collections cost
    ~0.8 s, and the interpreter's own at exit ~1 s, all on the critical path; frozen, 0.45 s;
    with the young generation at 7,000 allocations instead of 700, no full collection in the
    run and 0.32 s in all (same peak memory). Frozen objects are still freed by reference
    counting."""
    gc.freeze()
    gc.set_threshold(7000, 10, 10)


@contextmanager
def _opened(home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance, opened once (each open checks every storage's schema revision, ~0.4 s);
    its storage is created by one process at a time (a fresh SQLite's migration races)."""
    with _locked(home / "locks" / "instance.lock"):
        instance = dg.DagsterInstance.get()
    with instance:
        yield instance


def _innermost(error) -> str:
    """``Class: message`` of the error that caused a step failure, without Dagster's wrappers."""
    while error.cause is not None:
        error = error.cause
    head, sep, rest = error.message.strip().partition(": ")
    text = rest if sep and head.split(".")[-1] == error.cls_name else error.message.strip()
    return f"{error.cls_name}: {text}"


def import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    """Import ``modules`` in a daemon thread. A module missing is left to its step to report; so
    is one whose import met the run's own in the other order (importlib's deadlock error)."""

    def run() -> None:
        for name in modules:
            with suppress(ImportError, RuntimeError):
                importlib.import_module(name)

    thread = threading.Thread(target=run, name="qm-analysis-imports", daemon=True)
    thread.start()
    return thread


def _print_progress(
    instance: dg.DagsterInstance, run_id: str, stop: threading.Event, warm: tuple[str, ...] = ()
) -> None:
    """Print the run's step events and our log lines as they land. Only the events after the
    last cursor are read each poll: reading all of them (631 at the end of a 12k-image run,
    0.07 s) every 0.5 s took ~3 s of the run's GIL over its ~100 polls. When the image pass
    starts, the modules ``warm`` (the selected analysis steps' imports) are imported in the
    background."""
    cursor = None
    warming = False
    while True:
        finished = stop.wait(0.5)
        batch = instance.get_records_for_run(run_id, cursor=cursor)
        cursor = batch.cursor
        for record in (r.event_log_entry for r in batch.records):
            event = record.dagster_event
            if event is None and record.user_message.startswith(PREFIX):
                print(f"  {record.user_message}", flush=True)
            elif event is None and record.level >= logging.WARNING:
                print(f"  {logging.getLevelName(record.level).lower()}: {record.user_message}")
            if event is None or event.event_type not in _SHOWN:
                continue
            what = _SHOWN[event.event_type]
            if event.event_type == dg.DagsterEventType.STEP_START and warm and not warming:
                warming = event.step_key == PASS_STEP
                if warming:
                    import_in_background(warm)
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                print(f"  {what} {event.asset_key.to_user_string()}", flush=True)
            else:
                print(f"step {event.step_key}: {what}", flush=True)
        if finished:
            return
