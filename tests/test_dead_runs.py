"""A run whose worker is killed (kill -9) does not stay STARTED: dead_runs_sensor marks it
failed, and leaves a run whose worker is alive alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg

from assets import dead_runs

WORKER = textwrap.dedent(
    """
    import sys, time
    import dagster as dg

    @dg.asset
    def slow():
        time.sleep(120)

    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        dg.materialize([slow], instance=instance, tags={"which": sys.argv[2]})
    """
)


def _started(instance: dg.DagsterInstance, which: str, timeout: float = 60) -> dg.DagsterRun:
    """The run tagged ``which`` once it is STARTED and has recorded its worker's pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = instance.get_runs(dg.RunsFilter(tags={"which": which}))
        started = runs and runs[0].status == dg.DagsterRunStatus.STARTED
        if started and dead_runs.worker_pid(instance, runs[0].run_id) is not None:
            return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"run {which} did not start")


def test_killed_run_is_marked_failed_and_a_live_one_is_not(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # The storage is created here, before the workers start: two processes creating one fresh
    # SQLite instance at once race on its schema migration (as `qm materialize` avoids by a lock).
    with dg.DagsterInstance.from_config(str(home)) as instance:
        workers = {
            which: subprocess.Popen([sys.executable, "-c", WORKER, str(home), which])
            for which in ("killed", "alive")
        }
        try:
            killed, alive = _started(instance, "killed"), _started(instance, "alive")
            assert dead_runs.worker_pid(instance, killed.run_id) == workers["killed"].pid
            os.kill(workers["killed"].pid, signal.SIGKILL)
            workers["killed"].wait()
            assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.STARTED
            monkeypatch.setattr(dead_runs, "GRACE_SECONDS", 0.0)
            sensor = dead_runs.build_dead_runs_sensor(30)
            result = sensor(dg.build_sensor_context(instance=instance))
            assert killed.run_id in str(result.skip_message)
            assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
            failure = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert f"pid {workers['killed'].pid}" in failure[-1].dagster_event.message
            again = sensor(dg.build_sensor_context(instance=instance))
            assert again.skip_message == "no dead runs"
        finally:
            for worker in workers.values():
                worker.kill()
                worker.wait()
