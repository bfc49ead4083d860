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


def test_mutual_information_on_a_sample_of_many_predictions_matches_the_full_estimate():
    """Above ``mi_rows`` predictions the estimate reads a fixed-seed sample: on 200k rows it
    stays within 0.01 nats of scikit-learn's estimate on all of them, and Spearman still uses
    every row."""
    from sklearn.feature_selection import mutual_info_classif

    rng = np.random.default_rng(1)
    n = 200_000
    x = rng.random(n)
    tp = (x + rng.normal(0, 0.3, n) > 0.5).astype(float)
    table = pd.DataFrame({"model": "m", "score": x, "model/match": tp})
    row = metric_importance(table, mi_rows=20_000).set_index("metric").loc["score"]
    full = mutual_info_classif(x.reshape(-1, 1), tp.astype(int), random_state=0)[0]
    assert row.mutual_information == pytest.approx(full, abs=0.01)
    assert row.n == n
    assert row.spearman == pytest.approx(stats.spearmanr(x, tp).statistic, abs=1e-12)
