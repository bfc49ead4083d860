"""Fault injection: kill -9 a whole materialization at random moments, rerun, compare.

A generated labelled version (``scale_data``: real-photo crops, boxes and a detector's
predictions) is materialized once undisturbed with ``qm materialize VERSION`` (every asset, its
own storage and DAGSTER_HOME). Then, N times: a fresh storage and instance, ``qm materialize``
started and its whole process group (CLI, executor, image-pass workers) killed with SIGKILL at
a random moment of the first 80% of the undisturbed run's duration, then ``qm materialize`` again to the end.
Every Parquet table of the version must equal the undisturbed run's (rows sorted by their first
column), and no temporary or torn file may remain. Prints, for each trial, when it was killed,
the step that was running, the rerun's wall time and whether every table is identical.

Usage: python benchmarks/faults.py [--trials 5] [--size 300] [--seed 0] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import scale_data  # noqa: E402

QM = str(Path(sys.executable).with_name("qm"))


def _env(datasets: Path, work: Path) -> dict[str, str]:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "QM_DATASETS": str(datasets),
        "QM_STORAGE": str(work / "storage"),
        "QM_WORKERS": "2",
    }


def materialize(version: str, env: dict[str, str], kill_after: float | None = None):
    """``qm materialize VERSION`` in its own process group; killed (SIGKILL, whole group) after
    ``kill_after`` seconds if given. Returns (wall seconds, exit code, last step started)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [QM, "materialize", version],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if kill_after is not None:
        try:
            proc.wait(kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    steps = [line.split()[1].rstrip(":") for line in out.splitlines() if line.endswith("started")]
    return time.perf_counter() - start, proc.returncode, steps[-1] if steps else "-"


def tables(storage: Path, version: str) -> dict[str, pd.DataFrame]:
    """Every Parquet table of ``version`` under ``storage``, rows in a canonical order."""
    out = {}
    for path in sorted(storage.rglob(f"{version}.parquet")):
        frame = pd.read_parquet(path)
        if len(frame.columns):
            frame = frame.sort_values(list(frame.columns[:2]), kind="stable")
        out[str(path.relative_to(storage).parent)] = frame.reset_index(drop=True)
    return out


def differences(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> list[str]:
    """The tables that are missing on one side or differ."""
    bad = sorted(set(a) ^ set(b))
    for key in sorted(set(a) & set(b)):
        try:
            pd.testing.assert_frame_equal(a[key], b[key], check_like=True)
        except AssertionError:
            bad.append(key)
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=scale_data.CACHE)
    args = parser.parse_args()
    version_dir = scale_data.base_version(args.size, args.cache)
    version = version_dir.name
    work = Path(tempfile.mkdtemp(prefix="qm-faults-"))
    rng = random.Random(args.seed)
    try:
        reference_env = _env(version_dir.parent, work / "reference")
        wall, code, _ = materialize(version, reference_env)
        if code != 0:
            sys.exit(f"the undisturbed run failed ({code})")
        reference = tables(work / "reference" / "storage", version)
        print(f"{version}: undisturbed run {wall:.1f} s, {len(reference)} tables", flush=True)
        identical = 0
        for trial in range(1, args.trials + 1):
            env = _env(version_dir.parent, work / f"trial{trial}")
            at = rng.uniform(1.0, 0.8 * wall)
            _, code, step = materialize(version, env, kill_after=at)
            rerun, rerun_code, _ = materialize(version, env)
            storage = work / f"trial{trial}" / "storage"
            bad = differences(reference, tables(storage, version))
            torn = [p.name for p in storage.rglob(".tmp-*")]
            ok = rerun_code == 0 and not bad and not torn
            identical += ok
            killed = "killed" if code == -signal.SIGKILL else "not killed: finished"
            print(
                f"  trial {trial}: {killed} at {at:5.1f} s during {step}; rerun "
                f"{rerun:5.1f} s (exit {rerun_code}); "
                + ("every table identical" if ok else f"DIFFERS: {bad} torn {torn}"),
                flush=True,
            )
        print(f"identical after kill -9 and rerun: {identical} / {args.trials}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
