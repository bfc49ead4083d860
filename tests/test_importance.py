"""Metric importance equals scipy's Spearman and ranks the metric TP depends on first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qm_dagster.importance import metric_importance


def test_the_metric_tp_depends_on_ranks_first():
    rng = np.random.default_rng(0)
    n = 400
    brightness = rng.random(n)
    noise = rng.random(n)
    tp = (brightness + rng.normal(0, 0.15, n) > 0.5).astype(float)  # dark images fail
    table = pd.DataFrame(
        {
            "model": "m",
            "prediction_id": range(n),
            "score": rng.random(n),
            "data/brightness": brightness,
            "data/noise": noise,
            "model/match": tp,
        }
    )
    out = metric_importance(table).set_index("metric")
    assert out.index[0] == "data/brightness"
    assert out.loc["data/brightness", "spearman"] == pytest.approx(
        stats.spearmanr(brightness, tp).statistic
    )
    assert (
        out.loc["data/brightness", "mutual_information"]
        > 5 * out.loc["data/noise", "mutual_information"]
    )
    assert abs(out.loc["data/noise", "spearman"]) < 0.15
