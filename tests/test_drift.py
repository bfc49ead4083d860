"""Drift: statistics equal scipy's; image-permutation p-values equal scipy.stats.permutation_test
with the same statistic, unit and seed; a random image split of real COCO objects is not drift
(while iid tests call it drift) and the same split with one half darkened is; the verdict rule
switches from p-values to effect sizes on large samples; tests are chosen per metric."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from qm_dagster.drift import LARGE, Choice, domain_classifier, level_drift, stattests
from qm_dagster.drift.resampling import Null, chi2_test, ks_test, units
from qm_dagster.errors import QmError
from qm_dagster.metrics import load_metrics
from tests.real_objects import coco_objects

load_metrics()


def clustered(rng: np.random.Generator, images: int, shift: float = 0.0) -> pd.DataFrame:
    """Objects in clusters: each image has its own level (so rows of one image are alike)."""
    counts = rng.integers(1, 12, images)
    image_id = np.repeat(np.arange(images), counts)
    level = rng.normal(0, 1, images)[image_id]
    classes = rng.choice(["a", "b", "c"], images, p=[0.5, 0.3, 0.2])[image_id]
    value = level + rng.normal(0, 0.3, len(image_id)) + shift
    return pd.DataFrame({"image_id": image_id, "value": value, "category": classes})


def scipy_permutation_p(ref: pd.DataFrame, cur: pd.DataFrame, statistic, seed: int) -> float:
    """scipy.stats.permutation_test over the images (each side's own ids kept apart), the
    statistic computed from the rows of the images each side gets."""
    rows = pd.concat([ref, cur], ignore_index=True)
    unit = np.r_[
        np.unique(ref.image_id, return_inverse=True)[1],
        np.unique(cur.image_id, return_inverse=True)[1] + ref.image_id.nunique(),
    ]
    n_ref, n = ref.image_id.nunique(), ref.image_id.nunique() + cur.image_id.nunique()

    def on_rows(a, b):
        return statistic(rows[np.isin(unit, a)], rows[np.isin(unit, b)])

    result = stats.permutation_test(
        (np.arange(n_ref), np.arange(n_ref, n)),
        on_rows,
        permutation_type="independent",
        vectorized=False,
        n_resamples=999,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def _pooled(ref: pd.DataFrame, cur: pd.DataFrame, column: str):
    pooled = units(ref.image_id.to_numpy(), cur.image_id.to_numpy())
    values = np.r_[ref[column].to_numpy(), cur[column].to_numpy()]
    return values, pooled.rows, Null(pooled.n_reference, pooled.n, resamples=999, seed=7)


def test_image_permutation_p_values_equal_scipy_permutation_test():
    rng = np.random.default_rng(3)
    ref, cur = clustered(rng, 30), clustered(rng, 25, shift=0.4)
    values, unit, null = _pooled(ref, cur, "value")
    statistic, p = ks_test(values, unit, null)
    assert statistic == stats.ks_2samp(ref.value, cur.value).statistic
    expected = scipy_permutation_p(
        ref, cur, lambda a, b: stats.ks_2samp(a.value, b.value).statistic, seed=7
    )
    assert p == expected
    classes, unit, null = _pooled(ref, cur, "category")
    chi2, p = chi2_test(classes, unit, null)

    def chi2_of(a, b):
        table = pd.crosstab(
            pd.concat([a.category, b.category]), np.r_[np.zeros(len(a)), np.ones(len(b))]
        )
        return stats.chi2_contingency(table.to_numpy(), correction=False).statistic

    assert chi2 == pytest.approx(chi2_of(ref, cur), rel=1e-12)
    assert p == scipy_permutation_p(ref, cur, chi2_of, seed=7)


def test_few_images_enumerate_every_split_as_scipy_does():
    rng = np.random.default_rng(4)
    ref, cur = clustered(rng, 4), clustered(rng, 5, shift=1.0)
    values, unit, null = _pooled(ref, cur, "value")
    assert null.exact and null.size == 126
    _, p = ks_test(values, unit, null)
    assert p == scipy_permutation_p(
        ref, cur, lambda a, b: stats.ks_2samp(a.value, b.value).statistic, seed=7
    )


def test_image_level_statistics_equal_scipy():
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"image_id": range(400), "m": rng.normal(0.5, 0.1, 400)})
    cur = pd.DataFrame({"image_id": range(300), "m": rng.normal(0.55, 0.12, 300)})
    row = level_drift("image", ref, cur, ["m"]).iloc[0]
    ks = stats.ks_2samp(ref.m, cur.m)  # rows are images: KS's own p-value
    assert row.test == "ks" and row.statistic == ks.statistic and row.p_value == ks.pvalue
    assert row.threshold == 0.01
    assert row.wasserstein_std == stats.wasserstein_distance(ref.m, cur.m) / np.std(ref.m)
    edges = np.quantile(ref.m, np.linspace(0, 1, 11))
    p = np.histogram(ref.m, np.r_[-np.inf, edges[1:-1], np.inf])[0] / len(ref)
    q = np.histogram(cur.m, np.r_[-np.inf, edges[1:-1], np.inf])[0] / len(cur)
    assert row.psi == pytest.approx(np.sum((q - p) * np.log(q / p)))
    assert row.js == pytest.approx(jensenshannon(p, q, base=2))


def test_random_split_of_real_clustered_objects_is_not_drift_until_darkened():
    objects = coco_objects()
    ids = objects.image_id.unique()
    np.random.default_rng(0).shuffle(ids)
    first = set(ids[: len(ids) // 2].tolist())
    columns = [c for c in objects.columns if c.startswith("label/")]

    def split(frame):
        return frame[frame.image_id.isin(first)], frame[~frame.image_id.isin(first)]

    ref, cur = split(objects)
    result = level_drift("object", ref, cur, columns, classes="category")
    assert set(result.verdict) == {"ok"}, result[["metric", "p_value", "verdict"]]
    # the same rows as independent draws: iid tests cry wolf on this very split
    iid = [stats.ks_2samp(ref[c], cur[c]).pvalue for c in columns]
    assert min(iid) < 0.01
    _, darkened = split(coco_objects(darken=set(ids) - first))
    result = level_drift("object", ref, darkened, columns, classes="category").set_index("metric")
    assert result.loc["label/object_brightness", "verdict"] == "drift"
    assert result.drop("label/object_brightness").verdict.eq("ok").all()


def test_shuffled_copy_is_not_drift():
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        {
            "image_id": range(250),
            "data/brightness": rng.beta(2, 5, 250),
            "data/sharpness": rng.gamma(2, 300, 250),
        }
    )
    shuffled = table.sample(frac=1, random_state=3).reset_index(drop=True)
    columns = ["data/brightness", "data/sharpness"]
    result = level_drift("image", table, shuffled, columns)
    assert (result.statistic == 0).all() and set(result.verdict) == {"ok"}
    assert domain_classifier(table, shuffled, columns)["verdict"] == "ok"


def test_large_samples_use_effect_sizes():
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"image_id": range(200), "m": rng.normal(0, 1, 200)})
    shifted = ref.assign(m=ref.m * 0.5 + 1.0)
    assert level_drift("image", ref, shifted, ["m"]).verdict.iloc[0] == "drift"
    n = 5 * LARGE  # on a large sample a tiny shift is significant but not drift
    big_ref = pd.DataFrame({"image_id": range(n), "m": rng.normal(0, 1, n)})
    big_cur = pd.DataFrame({"image_id": range(n), "m": rng.normal(0.05, 1, n)})
    row = level_drift("image", big_ref, big_cur, ["m"]).iloc[0]
    assert row.test == "psi" and row.verdict == "ok" and row.threshold == 0.25
    assert stats.ks_2samp(big_ref.m, big_cur.m).pvalue < 0.01
    row = level_drift("image", big_ref, big_cur.assign(m=big_cur.m + 1), ["m"]).iloc[0]
    assert row.test == "psi" and row.verdict == "drift"


def test_class_share_change_is_label_drift():
    ref = pd.DataFrame({"image_id": range(600), "category": ["cat"] * 300 + ["dog"] * 300})
    cur = pd.DataFrame({"image_id": range(600), "category": ["cat"] * 500 + ["dog"] * 100})
    row = level_drift("object", ref, cur, [], classes="category").iloc[0]
    assert row.metric == "class_shares" and row.test == "chi2" and row.verdict == "drift"
    chi2 = stats.chi2_contingency(np.array([[300, 300], [500, 100]]), correction=False)
    assert row.statistic == pytest.approx(chi2.statistic) and row.p_value == 1 / 1000


def test_tests_are_chosen_per_metric_with_their_thresholds():
    rng = np.random.default_rng(5)
    ref = pd.DataFrame({"image_id": range(300), "a": rng.normal(0, 1, 300)})
    ref["b"] = ref.a
    cur = ref.assign(a=ref.a + 0.3, b=ref.b + 0.3)
    choices = {"a": Choice("wasserstein", 0.25), "b": Choice("none")}
    row = level_drift("image", ref, cur, ["a", "b"], choices).set_index("metric").loc["a"]
    assert row.test == "wasserstein" and row.threshold == 0.25 and row.verdict == "drift"
    assert row.statistic == pytest.approx(0.3 / np.std(ref.a))
    assert list(level_drift("image", ref, cur, ["b"], choices).metric) == []
    with pytest.raises(QmError, match="categorical"):
        stattests.resolve("chi2", "numeric", 10)
    with pytest.raises(QmError, match="no drift test 'kss'"):
        stattests.resolve("kss", "numeric", 10)


def test_qm_yaml_chooses_tests_and_refuses_unknown_ones(tmp_path):
    from qm_dagster.config import Settings
    from qm_dagster.drift import choices

    config = tmp_path / "qm.yaml"
    config.write_text(
        "drift_tests:\n"
        "  data/brightness: psi\n"
        "  label/object_area: {test: wasserstein, threshold: 0.3}\n"
        "outlier_rules:\n"
        "  data/brightness: tukey\n"
    )
    settings = Settings.load({"QM_CONFIG": str(config)})
    picked = choices(
        ["data/brightness", "label/object_area", "label/class_frequency"], settings.drift_tests
    )
    assert picked["data/brightness"] == Choice("psi")
    assert picked["label/object_area"] == Choice("wasserstein", 0.3)
    assert picked["label/class_frequency"] == Choice("none")  # its descriptor: not tested
    assert picked["class_shares"] == Choice("auto")
    assert settings.outlier_rules == (("data/brightness", "tukey"),)
    config.write_text("drift_tests:\n  data/brightness: kss\n")
    with pytest.raises(QmError, match="data/brightness: no drift test 'kss'"):
        Settings.load({"QM_CONFIG": str(config)})
