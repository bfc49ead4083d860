"""Drift of a version against its reference: per metric, on class shares, and multivariate.

Per metric: KS statistic and p-value (``scipy.stats.ks_2samp``), Wasserstein distance divided by
the reference's standard deviation (``scipy.stats.wasserstein_distance``), PSI and Jensen-Shannon
distance on ten reference-quantile bins. Class shares: chi-square test and Jensen-Shannon distance.
Multivariate: a domain classifier (cross-validated ROC AUC of telling the two versions apart).

Verdict rule (size-aware, so a million rows do not turn every wobble into drift):
- fewer than ``LARGE`` values on the smaller side: the p-value decides — ``drift`` below 0.01,
  ``warning`` below 0.05;
- otherwise effect sizes decide — ``drift`` when PSI >= 0.25 or Wasserstein/std >= 0.5,
  ``warning`` when PSI >= 0.1 or Wasserstein/std >= 0.2;
- multivariate: ``drift`` when 2*AUC - 1 >= 0.3, ``warning`` from 0.15.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

LARGE = 1000
BINS = 10
EPS = 1e-4  # floor of a bin share in PSI, so an empty bin does not make it infinite
# ``statistic`` is what ``test`` names: the KS statistic, the chi-square statistic (class shares)
# or the ROC AUC (domain classifier, whose ``effect`` is 2*AUC - 1).
COLUMNS = [
    "metric",
    "test",
    "n_reference",
    "n_current",
    "statistic",
    "p_value",
    "wasserstein_std",
    "psi",
    "js",
    "effect",
    "reference_mean",
    "current_mean",
    "verdict",
]


def quantile_bins(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin edges at the reference's quantiles (duplicates merged), open at both ends."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.concatenate([[-np.inf], edges, [np.inf]])


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    return counts / max(counts.sum(), 1)


def psi(reference: np.ndarray, current: np.ndarray, edges: np.ndarray) -> float:
    p = np.maximum(shares(reference, edges), EPS)
    q = np.maximum(shares(current, edges), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def verdict(n: int, p_value: float, psi_value: float, w_std: float) -> str:
    if n < LARGE:
        return "drift" if p_value < 0.01 else "warning" if p_value < 0.05 else "ok"
    if psi_value >= 0.25 or w_std >= 0.5:
        return "drift"
    return "warning" if psi_value >= 0.1 or w_std >= 0.2 else "ok"


def metric_drift(metric: str, reference: np.ndarray, current: np.ndarray) -> dict[str, object]:
    ref = reference[np.isfinite(reference)]
    cur = current[np.isfinite(current)]
    row: dict[str, object] = {
        "metric": metric,
        "test": "ks",
        "n_reference": len(ref),
        "n_current": len(cur),
    }
    if len(ref) < 2 or len(cur) < 2:
        return {**row, "verdict": "insufficient data"}
    ks = stats.ks_2samp(ref, cur)
    std = float(np.std(ref))
    w = stats.wasserstein_distance(ref, cur)
    w_std = w / std if std > 0 else (0.0 if w == 0 else np.inf)
    edges = quantile_bins(ref)
    psi_value = psi(ref, cur, edges)
    js = float(jensenshannon(shares(ref, edges), shares(cur, edges), base=2))
    return {
        **row,
        "statistic": float(ks.statistic),
        "p_value": float(ks.pvalue),
        "wasserstein_std": w_std,
        "psi": psi_value,
        "js": js,
        "reference_mean": float(ref.mean()),
        "current_mean": float(cur.mean()),
        "verdict": verdict(min(len(ref), len(cur)), float(ks.pvalue), psi_value, w_std),
    }


def table_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per numeric column present in both tables."""
    rows = [
        metric_drift(
            c,
            pd.to_numeric(reference[c], errors="coerce").to_numpy(float),
            pd.to_numeric(current[c], errors="coerce").to_numpy(float),
        )
        for c in columns
        if c in reference and c in current
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def label_drift(reference: pd.Series, current: pd.Series) -> dict[str, object]:
    """Class shares: chi-square test of the two count vectors and their JS distance."""
    counts = pd.concat(
        [reference.value_counts().rename("ref"), current.value_counts().rename("cur")], axis=1
    ).fillna(0)
    row: dict[str, object] = {
        "metric": "class_shares",
        "test": "chi2",
        "n_reference": len(reference),
        "n_current": len(current),
    }
    if len(counts) < 2 or counts.ref.sum() == 0 or counts.cur.sum() == 0:
        return {**row, "verdict": "insufficient data"}
    chi2 = stats.chi2_contingency(counts.to_numpy().T)
    js = float(jensenshannon(counts.ref / counts.ref.sum(), counts.cur / counts.cur.sum(), base=2))
    n = int(min(counts.ref.sum(), counts.cur.sum()))
    p = float(chi2.pvalue)
    v = (
        ("drift" if p < 0.01 else "warning" if p < 0.05 else "ok")
        if n < LARGE
        else ("drift" if js >= 0.2 else "warning" if js >= 0.1 else "ok")
    )
    return {**row, "statistic": float(chi2.statistic), "p_value": p, "js": js, "verdict": v}


def domain_classifier(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], seed: int = 0
) -> dict[str, object]:
    """Cross-validated ROC AUC of a classifier telling current rows from reference rows."""
    cols = [c for c in columns if c in reference and c in current]
    row: dict[str, object] = {
        "metric": "domain_classifier",
        "test": "auc",
        "n_reference": len(reference),
        "n_current": len(current),
    }
    if not cols or min(len(reference), len(current)) < 10:
        return {**row, "verdict": "insufficient data"}
    x = pd.concat([reference[cols], current[cols]], ignore_index=True).astype(float).to_numpy()
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    proba = cross_val_predict(
        HistGradientBoostingClassifier(random_state=seed), x, y, cv=folds, method="predict_proba"
    )[:, 1]
    auc = float(roc_auc_score(y, proba))
    gini = 2 * auc - 1
    return {
        **row,
        "statistic": auc,
        "effect": gini,
        "verdict": "drift" if gini >= 0.3 else "warning" if gini >= 0.15 else "ok",
    }
