"""Test cases as asset checks: the shipped checks.yaml on the demo — the drift check fails on the
shifted production version and passes on train; bad check files are refused with a clear error."""

from __future__ import annotations

import pandas as pd
import pytest

from qm_dagster.checks import Check, evaluate, load_checks
from qm_dagster.errors import QmError
from tests.conftest import PROJECT


def outcomes(result) -> dict[str, tuple[bool, str]]:
    return {
        e.asset_check_key.name: (e.passed, e.severity.value)
        for e in result.get_asset_check_evaluations()
    }


def test_demo_checks_pass_on_train_and_drift_fails_on_production(demo):
    train = demo.runs["train"]
    assert train.success
    results = outcomes(train)
    assert results["detector_ap50_overall"] == (True, "ERROR")
    assert results["no_brightness_drift"][0]  # train has no reference: nothing to drift from
    assert results["few_severe_brightness_outliers"] == (True, "WARN")
    production = demo.runs["production"]
    results = outcomes(production)
    assert results["no_brightness_drift"] == (False, "ERROR")
    evaluation = next(
        e
        for e in production.get_asset_check_evaluations()
        if e.asset_check_key.name == "no_brightness_drift"
    )
    assert "drift" in evaluation.metadata["measured"].value


def test_bad_check_files_name_the_check(tmp_path):
    path = tmp_path / "checks.yaml"
    path.write_text("checks:\n  - name: x\n    target: nowhere\n")
    with pytest.raises(QmError, match=r"checks\[0\]: 'target' must be one of"):
        load_checks(str(path))
    path.write_text("checks:\n  - name: x\n    target: drift\n    treshold: 3\n")
    with pytest.raises(QmError, match="treshold"):
        load_checks(str(path))
    path.write_text("checks:\n  - name: x\n    target: sliced_evaluation\n    iou_type: mask\n")
    with pytest.raises(QmError, match=r"checks\[0\]: 'iou_type' must be one of"):
        load_checks(str(path))
    assert (
        next(c.name for c in load_checks(str(PROJECT / "checks.yaml"))) == "detector_ap50_overall"
    )


def test_outlier_share_overall_and_per_metric():
    frame = pd.DataFrame(
        {
            "level": ["image", "image", "image", "object"],
            "metric": ["data/blur", "data/brightness", "data/blur", "label/object_area"],
            "image_id": [1, 2, 2, 3],
            "severity": ["severe", "severe", "moderate", "severe"],
        }
    )
    overall = Check("o", "outliers", stat="severe_share", op="<=", value=0.3)
    result = evaluate(overall, frame, images=10)  # images 1 and 2 have an image-level severe
    assert result.measured == pytest.approx(0.2) and result.passed
    one = Check("b", "outliers", metric="data/brightness", stat="severe_share", op="<=", value=0.05)
    result = evaluate(one, frame, images=10)  # image 2 only
    assert result.measured == pytest.approx(0.1) and not result.passed


def test_sliced_check_reads_the_box_rows_unless_it_names_segm():
    frame = pd.DataFrame(
        {
            "model": ["m", "m", "m", "m"],
            "iou_type": ["bbox", "bbox", "segm", "segm"],
            "metric": ["all", "data/blur", "all", "data/blur"],
            "bucket": [0, 1, 0, 1],
            "AP": [0.5, 0.4, 0.3, 0.2],
        }
    )
    box = Check("b", "sliced_evaluation", model="m", metric="data/blur", bucket="1", stat="AP")
    assert evaluate(box, frame).measured == pytest.approx(0.4)
    mask = Check("s", "sliced_evaluation", model="m", stat="AP", iou_type="segm", value=0.35)
    result = evaluate(mask, frame)
    assert result.measured == pytest.approx(0.3) and not result.passed
    other = Check("k", "sliced_evaluation", model="m", stat="AP", iou_type="keypoints")
    assert "no slice" in evaluate(other, frame).text
