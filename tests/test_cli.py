"""The qm command line, run as a user runs it (subprocesses against a DAGSTER_HOME instance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import PROJECT

QM = str(Path(sys.executable).with_name("qm"))


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [QM, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_demo_materialize_show(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "QM_DATASETS": str(tmp_path / "d"),
        "QM_STORAGE": str(tmp_path / "s"),
        "QM_WORKERS": "1",
    }
    run(["demo"], env)
    assert run(["versions"], env).stdout.split() == ["production", "train", "validation"]

    out = run(["materialize", "validation"], env).stdout
    assert "step dataset_manifest: done" in out
    assert "step image_pass: done" in out
    assert "materialized data/brightness" in out
    assert out.rstrip().splitlines()[-1].startswith("SUCCESS")

    with dg.DagsterInstance.from_config(str(home)) as instance:
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
