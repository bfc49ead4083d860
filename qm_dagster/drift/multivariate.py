"""Multivariate drift: a domain classifier over every image metric.

A gradient-boosted classifier learns to tell current images from reference images; its
cross-validated ROC AUC is the statistic and ``2*AUC - 1`` the effect: ``drift`` from
``THRESHOLD`` (0.3), ``warning`` from half of it. The rows are images, so the folds split
images, the sampling unit of every drift test. A side with more than ``MAX_ROWS`` images is
sampled (fixed seed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

THRESHOLD = 0.3
MAX_ROWS = 20_000  # images a side the classifier sees (fixed-seed sample): AUC's error ~0.005


def _sample(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    return table.sample(MAX_ROWS, random_state=seed) if len(table) > MAX_ROWS else table


def domain_classifier(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], seed: int = 0
) -> dict[str, object]:
    """Cross-validated ROC AUC of a classifier telling current rows from reference rows."""
    cols = [c for c in columns if c in reference and c in current]
    row: dict[str, object] = {
        "metric": "domain_classifier",
        "test": "domain_classifier",
        "n_reference": len(reference),
        "n_current": len(current),
        "threshold": THRESHOLD,
    }
    if not cols or min(len(reference), len(current)) < 10:
        return {**row, "verdict": "insufficient data"}
    reference, current = _sample(reference, seed), _sample(current, seed)
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
        "verdict": "drift" if gini >= THRESHOLD else "warning" if gini >= THRESHOLD / 2 else "ok",
    }
