"""Drift statistics equal scipy's on the same columns; a shuffled copy is not drift; the verdict
rule switches from p-values to effect sizes on large samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qm_dagster.drift import (
    LARGE,
    domain_classifier,
    label_drift,
    metric_drift,
    psi,
    quantile_bins,
    table_drift,
)


def test_statistics_equal_scipy():
    rng = np.random.default_rng(0)
    ref, cur = rng.normal(0.5, 0.1, 400), rng.normal(0.55, 0.12, 300)
    row = metric_drift("data/brightness", ref, cur)
    ks = stats.ks_2samp(ref, cur)
    assert row["statistic"] == ks.statistic and row["p_value"] == ks.pvalue
    assert row["wasserstein_std"] == stats.wasserstein_distance(ref, cur) / np.std(ref)
    edges = np.quantile(ref, np.linspace(0, 1, 11))
    p = np.histogram(ref, np.r_[-np.inf, edges[1:-1], np.inf])[0] / len(ref)
    q = np.histogram(cur, np.r_[-np.inf, edges[1:-1], np.inf])[0] / len(cur)
    assert row["psi"] == pytest.approx(np.sum((q - p) * np.log(q / p)))
    from scipy.spatial.distance import jensenshannon

    assert row["js"] == pytest.approx(jensenshannon(p, q, base=2))


def test_shuffled_copy_is_not_drift():
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        {"data/brightness": rng.beta(2, 5, 250), "data/sharpness": rng.gamma(2, 300, 250)}
    )
    shuffled = table.sample(frac=1, random_state=3).reset_index(drop=True)
    result = table_drift(table, shuffled, list(table.columns))
    assert (result.statistic == 0).all() and set(result.verdict) == {"ok"}
    assert domain_classifier(table, shuffled, list(table.columns))["verdict"] == "ok"
    categories = pd.Series(rng.choice(["a", "b", "c"], 300))
    assert label_drift(categories, categories.sample(frac=1, random_state=2))["verdict"] == "ok"


def test_shift_is_drift_and_large_samples_use_effect_sizes():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, 200)
    assert metric_drift("m", ref, ref * 0.5 + 1.0)["verdict"] == "drift"
    # on a large sample a tiny shift is significant but not drift: the effect size decides
    big_ref, big_cur = rng.normal(0, 1, 50 * LARGE), rng.normal(0.03, 1, 50 * LARGE)
    row = metric_drift("m", big_ref, big_cur)
    assert row["p_value"] < 0.01 and row["verdict"] == "ok"
    assert psi(big_ref, big_cur, quantile_bins(big_ref)) < 0.1


def test_class_share_change_is_label_drift():
    ref = pd.Series(["cat"] * 300 + ["dog"] * 300)
    cur = pd.Series(["cat"] * 500 + ["dog"] * 100)
    row = label_drift(ref, cur)
    chi2 = stats.chi2_contingency(np.array([[300, 300], [500, 100]]))
    assert row["p_value"] == pytest.approx(chi2.pvalue) and row["verdict"] == "drift"
