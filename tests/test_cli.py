"""The qm command line, run as a user runs it (subprocesses against a DAGSTER_HOME instance)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import PROJECT
from tests.images import checkerboard, commit, solid, write_image

QM = str(Path(sys.executable).with_name("qm"))


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [QM, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell: a DAGSTER_HOME with the project's dagster.yaml."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "QM_DATASETS": str(tmp_path / "d"),
        "QM_STORAGE": str(tmp_path / "s"),
        "QM_WORKERS": "1",
    }


@pytest.mark.slow
def test_demo_materialize_show(tmp_path):
    env = cli_env(tmp_path)
    run(["demo"], env)
    assert run(["versions"], env).stdout.split() == ["production", "train", "validation"]

    out = run(["materialize", "validation"], env).stdout
    assert "step dataset_manifest: done" in out
    assert "step image_pass: done" in out
    assert "materialized data/brightness" in out
    assert out.rstrip().splitlines()[-1].startswith("SUCCESS")

    with open_instance(env) as instance:
        assert instance.get_dynamic_partitions("dataset_versions") == ["validation"]
        event = instance.get_latest_materialization_event(dg.AssetKey(["data", "brightness"]))
        assert event is not None and event.dagster_event.partition == "validation"

    shown = json.loads(
        run(
            [
                "show",
                "validation",
                "--asset",
                "data/brightness",
                "--sort",
                "asc",
                "--limit",
                "3",
                "--format",
                "json",
            ],
            env,
        ).stdout
    )
    stored = pd.read_parquet(tmp_path / "s" / "data" / "brightness" / "validation.parquet")
    assert [r["value"] for r in shown] == sorted(stored.value)[:3]
    assert all(r["file_name"] for r in shown)

    where = (
        run(
            [
                "show",
                "validation",
                "--asset",
                "data/brightness",
                "--where",
                "value > 0.5",
                "--limit",
                "0",
                "--format",
                "csv",
            ],
            env,
        )
        .stdout.strip()
        .splitlines()
    )
    assert len(where) - 1 == (stored.value > 0.5).sum()

    bad = run(
        ["show", "validation", "--asset", "data/brightness", "--where", "nope >"], env, check=False
    )
    assert bad.returncode == 2 and "--where" in bad.stderr
    missing = run(["materialize", "bad/name"], env, check=False)
    assert missing.returncode == 2 and "invalid" in missing.stderr
    unknown = run(["materialize", "validation", "--select", "data/nothing*"], env, check=False)
    assert unknown.returncode == 2 and "matches no asset" in unknown.stderr


def _tiny_version(folder: Path, width: float) -> None:
    """Three images and one box of the given ``width`` (negative: a malformed record)."""
    images = []
    for i, rgb in enumerate([checkerboard(), solid((200, 30, 30)), solid((20, 20, 20))]):
        write_image(folder / "images" / f"{i}.png", rgb)
        h, w = rgb.shape[:2]
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, width, 4], "iscrowd": 0}
    coco = {"images": images, "annotations": [box], "categories": [{"id": 1, "name": "x"}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    commit(folder)


@pytest.mark.slow
def test_failures_print_messages_and_select_brings_missing_upstream(tmp_path):
    """A malformed annotations.json: the one-line message once, no traceback (``--debug``
    shows it), a non-zero exit. ``--select data/brightness`` on a new version also
    materializes the dataset assets it reads, instead of failing in the IO manager."""
    env = {**cli_env(tmp_path), "QM_ANNOTATION_ERRORS": "strict"}
    _tiny_version(tmp_path / "d" / "v", width=-3)
    failed = run(["materialize", "v", "--select", "dataset/*"], env, check=False)
    said = failed.stdout + failed.stderr
    message = "at annotations[0].bbox: expected a number >= 0, got -3"
    assert failed.returncode == 1 and said.count(message) == 1, said
    assert "DatasetError" in said and "Traceback" not in said and "Stack Trace" not in said
    debug = run(["materialize", "v", "--select", "dataset/*", "--debug"], env, check=False)
    assert debug.returncode == 1 and "Stack Trace" in debug.stdout + debug.stderr

    _tiny_version(tmp_path / "d" / "w", width=3)
    done = run(["materialize", "w", "--select", "data/brightness"], env)
    assert "also materializing" in done.stdout and "dataset/manifest" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("SUCCESS")
    stored = pd.read_parquet(tmp_path / "s" / "data" / "brightness" / "w.parquet")
    assert len(stored) == 3
    again = run(["materialize", "w", "--select", "data/brightness"], env)
    assert "also materializing" not in again.stdout  # now stored: nothing added


def test_unexpected_errors_are_messages_unless_debug(tmp_path, capsys, monkeypatch):
    from qm_dagster import cli

    def broken(args, settings):
        raise OSError("disk on fire")

    monkeypatch.setitem(cli.COMMANDS, "versions", broken)
    assert cli.main(["versions"]) == 1
    assert capsys.readouterr().err.strip() == (
        "qm: error: OSError: disk on fire (--debug shows the traceback)"
    )
    with pytest.raises(OSError):
        cli.main(["versions", "--debug"])


@contextlib.contextmanager
def open_instance(env: dict[str, str]):
    """The CLI's instance, from this process: its dagster.yaml resolves DAGSTER_HOME."""
    with (
        mock.patch.dict(os.environ, {"DAGSTER_HOME": env["DAGSTER_HOME"]}),
        dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance,
    ):
        yield instance


SLOW_RUN = """
import sys, time
import dagster as dg

@dg.asset
def slow():
    time.sleep(120)

with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    dg.materialize([slow], instance=instance, tags={"dagster/partition": sys.argv[2]})
"""


@pytest.mark.slow
def test_runs_of_one_version_take_turns(tmp_path):
    """Two qm materialize of a version started while its lock is held both wait, then run one
    after the other; one waits for a run of the version already in progress until that run's
    worker dies and it is marked failed; the project's dagster.yaml queues the daemon's runs
    one per version."""
    env = cli_env(tmp_path)
    _tiny_version(tmp_path / "d" / "v", width=3)
    args = [QM, "materialize", "v", "--select", "dataset/*"]
    lock_file = Path(env["DAGSTER_HOME"]) / "locks" / "v.lock"
    lock_file.parent.mkdir(parents=True)
    logs = [tmp_path / f"cli{i}.txt" for i in range(2)]
    with open(lock_file, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a qm materialize of v in progress: both must wait
        both = [
            subprocess.Popen(args, cwd=PROJECT, env=env, stdout=log.open("w"), text=True)
            for log in logs
        ]
        deadline = time.time() + 120
        while not all("waiting: another qm materialize of v" in log.read_text() for log in logs):
            assert time.time() < deadline, [log.read_text() for log in logs]
            time.sleep(0.2)
    assert [p.wait(timeout=300) for p in both] == [0, 0], [log.read_text() for log in logs]
    with open_instance(env) as instance:
        records = sorted(
            instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": "v"})),
            key=lambda r: r.start_time,
        )
        assert len(records) == 2 and records[1].start_time >= records[0].end_time
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
        assert {
            "key": "dagster/partition",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        } in limits

    worker = subprocess.Popen([sys.executable, "-c", SLOW_RUN, env["DAGSTER_HOME"], "v"], env=env)
    try:
        with open_instance(env) as instance:
            deadline = time.time() + 60
            while not instance.get_runs(
                dg.RunsFilter(
                    tags={"dagster/partition": "v"}, statuses=[dg.DagsterRunStatus.STARTED]
                )
            ):
                assert time.time() < deadline
                time.sleep(0.2)
        waiting = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        assert waiting.poll() is None  # still waiting for the run in progress
        worker.kill()
        out = waiting.communicate(timeout=300)[0]
        assert waiting.returncode == 0 and "is in progress" in out, out
    finally:
        worker.kill()
        worker.wait()


def test_analysis_modules_are_imported_in_the_background():
    """What ``qm materialize`` imports while the image pass's workers run: every module the
    analysis steps import lazily exists, and the thread imports them (one not yet imported
    here stands in for them); a missing module is left to the step that needs it."""
    import importlib.util

    from qm_dagster.cli_dagster import ANALYSIS_MODULES, import_in_background

    assert all(importlib.util.find_spec(name) for name in ANALYSIS_MODULES)
    probe = "xml.dom.minidom"
    sys.modules.pop(probe, None)
    import_in_background(("no_such_module_here", probe)).join(timeout=60)
    assert probe in sys.modules
