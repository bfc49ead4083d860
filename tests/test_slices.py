"""Named slices: configured once, used by sliced evaluation (a ``slice:<name>`` row equal to the
bucket logic on those images, or an object slice's own evaluation), `qm show --slice` and `qm export` (a valid new version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qm_dagster import load
from qm_dagster.dataset import DatasetRoot
from qm_dagster.errors import QmError
from qm_dagster.slices import apply, find, parse_slices
from tests.conftest import DEMO_SLICES, PROJECT


def test_parse_and_errors():
    slices = parse_slices(DEMO_SLICES)
    assert find(slices, "small_objects").level == "object"
    with pytest.raises(QmError, match="no slice named 'nope'"):
        find(slices, "nope")
    with pytest.raises(QmError, match="level must be one of"):
        parse_slices({"x": {"level": "pixel", "where": "a < 1"}})


def test_slices_in_evaluation_show_and_export(demo):
    settings, config = demo.settings, demo.config
    assert demo.runs["production"].success
    table = load("analysis/quality_table/image", "production", settings)
    dark = apply(find(settings.slices, "dark"), table)
    assert 0 < len(dark) < len(table)
    sliced = load("analysis/sliced_evaluation", "production", settings)
    row = sliced[sliced.metric == "slice:dark"].iloc[0]
    assert row.n_images == len(dark)
    objects = load("analysis/quality_table/object", "production", settings)
    small = apply(find(settings.slices, "small_objects"), objects)
    (small_row,) = sliced[sliced.metric == "slice:small_objects"].itertuples()
    assert small_row.level == "object" and small_row.n_members == len(small) > 0

    env = {
        **os.environ,
        "QM_CONFIG": str(config),
        "QM_DATASETS": settings.datasets,
        "QM_STORAGE": settings.storage,
    }
    qm = str(Path(sys.executable).with_name("qm"))
    shown = subprocess.run(
        [qm, "show", "production", "--slice", "dark", "--limit", "0", "--format", "json"],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(r["image_id"] for r in json.loads(shown.stdout)) == sorted(dark.image_id)
    subprocess.run(
        [qm, "export", "production", "--slice", "dark"],
        env=env,
        cwd=PROJECT,
        check=True,
        capture_output=True,
    )
    exported = DatasetRoot(settings.datasets).version("production-dark")
    assert exported.is_complete()
    coco = exported.instances()
    assert sorted(coco.images.image_id) == sorted(dark.image_id)
    assert set(coco.annotations.image_id) <= set(dark.image_id)
    assert exported.meta().reference == "train"
    preds = exported.predictions("demo_detector", coco)
    assert set(preds.image_id) <= set(dark.image_id) and len(preds) > 0
