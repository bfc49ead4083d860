"""Runs whose worker process is gone are marked failed.

A run killed with ``kill -9`` (or whose machine lost power) never records its end: it stays
STARTED in the instance forever, and the eager automation of its downstream assets waits on it.
Dagster's run monitoring can only see dead workers through launchers that report worker health
(Kubernetes, ECS, Docker); the default launcher, which runs workers as local processes, cannot.
This sensor closes that gap on one machine: a STARTED run whose worker process (the first pid
its engine events record) no longer exists, or is another process that started after the run,
is reported failed with the reason. With a cluster launcher, use ``run_monitoring`` instead
(dagster.yaml).
"""

import dagster as dg
import psutil

GRACE_SECONDS = 10.0  # a run younger than this may not have recorded its pid yet


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the run's worker: the first engine event that records one."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        pid = data.metadata.get("pid") if data else None
        if pid is not None:
            return int(pid.value)
    return None


def is_alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` exists and is the one that was there when the run started."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent
            return False
        return process.create_time() <= started + 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # someone else's process: cannot tell, leave the run alone


def dead_runs(instance: dg.DagsterInstance, now: float) -> list[tuple[dg.DagsterRun, int]]:
    """STARTED runs (older than the grace period) whose worker process is gone, with its pid."""
    records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    out = []
    for record in records:
        started = record.start_time or record.create_timestamp.timestamp()
        if now - started < GRACE_SECONDS:
            continue
        pid = worker_pid(instance, record.dagster_run.run_id)
        if pid is not None and not is_alive(pid, started):
            out.append((record.dagster_run, pid))
    return out


def mark_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Report every dead run (``dead_runs``) failed, with the reason; their run ids."""
    import time

    marked = []
    for run, pid in dead_runs(instance, time.time()):
        instance.report_run_failed(
            run, f"the run's worker process (pid {pid}) is gone: it was killed or crashed"
        )
        marked.append(run.run_id)
    return marked


def build_dead_runs_sensor(interval: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="dead_runs_sensor",
        description="Marks failed the STARTED runs whose worker process is gone (killed, "
        "crashed), so they do not stay 'started' forever and hold up automation.",
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def dead_runs_sensor(context: dg.SensorEvaluationContext):
        marked = mark_dead_runs(context.instance)
        return dg.SkipReason(
            f"marked {len(marked)} dead runs failed: {', '.join(marked)}"
            if marked
            else "no dead runs"
        )

    return dead_runs_sensor
