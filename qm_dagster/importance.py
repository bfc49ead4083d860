"""Metric importance: how strongly each metric goes with a prediction being a true positive.

Per model, over its matched predictions (TP or FP at IoU 0.5): Spearman's rank correlation with
TP (``scipy.stats.spearmanr``) and the mutual information in nats
(``sklearn.feature_selection.mutual_info_classif``, fixed seed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.feature_selection import mutual_info_classif

COLUMNS = ["model", "metric", "n", "spearman", "p_value", "mutual_information"]
EXCLUDED = {"model/match", "model/confidence"}


def metric_importance(prediction_table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per model and numeric metric column of the prediction quality table."""
    if "model/match" not in prediction_table:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    columns = [
        c
        for c in prediction_table.columns
        if "/" in c and c not in EXCLUDED and pd.api.types.is_numeric_dtype(prediction_table[c])
    ]
    for model, table in prediction_table.groupby("model", sort=True):
        table = table[table["model/match"].notna()]
        tp = table["model/match"].to_numpy(dtype=int)
        for col in ["score", *columns]:
            x = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(x)
            if ok.sum() < 5 or len(np.unique(tp[ok])) < 2 or np.ptp(x[ok]) == 0:
                continue
            rho = stats.spearmanr(x[ok], tp[ok])
            mi = mutual_info_classif(x[ok].reshape(-1, 1), tp[ok], random_state=seed)[0]
            rows.append(
                {
                    "model": model,
                    "metric": col,
                    "n": int(ok.sum()),
                    "spearman": float(rho.statistic),
                    "p_value": float(rho.pvalue),
                    "mutual_information": float(mi),
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["model", "mutual_information"], ascending=[True, False]).reset_index(
        drop=True
    )
