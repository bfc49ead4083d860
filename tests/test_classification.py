"""Classification versions: import, the whole graph through Dagster, metrics, sliced accuracy
and macro F1 against scikit-learn, cleanlab's label issues on planted flips, class-share drift."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, f1_score, recall_score

from qm_dagster import classification as cls
from qm_dagster.config import Settings
from qm_dagster.dataset import DatasetRoot
from qm_dagster.drift import version_drift
from qm_dagster.errors import DatasetError
from qm_dagster.importers import import_classification
from tests.classification_data import CLASSES, Crops, build
from tests.conftest import materialize_version, shared

VERSION = "cls-train"


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Crops:
    return build(shared("coco-val2014-fake100"), tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module")
def graph(crops, tmp_path_factory) -> Settings:
    """The crops imported as a classification version (labels from the class folders, the
    simulated model ``sim``) and every asset materialized through Dagster."""
    root = tmp_path_factory.mktemp("cls")
    settings = Settings(
        datasets=str(root / "datasets"), storage=str(root / "storage"), workers=1, chunk_size=64
    )
    import_classification(
        str(crops.images),
        settings.datasets,
        VERSION,
        predictions=str(crops.probabilities),
        model="sim",
        kind="train",
    )
    result = materialize_version(settings, VERSION)
    assert result.success
    return settings


def _stored(settings: Settings, key: str) -> pd.DataFrame:
    return pd.read_parquet(Path(settings.storage) / key / f"{VERSION}.parquet")


def _probabilities(crops: Crops) -> pd.DataFrame:
    frame = pd.read_csv(crops.probabilities).set_index("file_name")
    return frame[CLASSES].div(frame[CLASSES].sum(axis=1), axis=0)


def test_import_keeps_folder_labels_and_probabilities(crops, graph):
    version = DatasetRoot(graph.datasets).version(VERSION)
    assert version.task() == cls.TASK and cls.version_classes(version) == CLASSES
    assert version.prediction_files() == {}  # not detections
    labels = _stored(graph, "dataset/classifications").set_index("image_id").label
    assert labels.to_dict() == crops.given
    preds = _stored(graph, "dataset/class_predictions")
    probs = _probabilities(crops).loc[preds.image_id]
    np.testing.assert_allclose(np.stack(preds.probs.to_numpy()), probs.to_numpy(), rtol=1e-12)
    assert (preds.predicted.to_numpy() == probs.idxmax(axis=1).to_numpy()).all()


def test_per_image_model_metrics_equal_numpy_and_scipy(crops, graph):
    table = _stored(graph, "analysis/quality_table/image").set_index("image_id")
    p = _probabilities(crops).loc[table.index].to_numpy()
    top2 = np.sort(p, axis=1)[:, -2:]
    given = np.array([CLASSES.index(crops.given[i]) for i in table.index])
    expected = {
        "model/class_confidence@sim": p.max(axis=1),
        "model/class_margin@sim": top2[:, 1] - top2[:, 0],
        "model/class_entropy@sim": scipy_entropy(p, base=2, axis=1),
        "model/class_correct@sim": (p.argmax(axis=1) == given).astype(float),
        # cleanlab's default label quality is the self-confidence: p(label)
        "model/label_quality@sim": p[np.arange(len(p)), given],
    }
    for column, values in expected.items():
        np.testing.assert_allclose(table[column].to_numpy(float), values, atol=1e-12)
    shares = pd.Series(crops.given).value_counts(normalize=True)
    np.testing.assert_allclose(
        table["label/class_share"], table["class"].map(shares).to_numpy(float), atol=1e-15
    )
    assert (table["predicted@sim"] == _probabilities(crops).idxmax(axis=1).loc[table.index]).all()


def test_sliced_accuracy_macro_f1_and_recall_equal_sklearn_on_every_subset(crops, graph):
    """Each row's subset is rebuilt from the stored metric values and the bucket edges, and its
    labels (classifications.csv, as imported) and predictions (the probability CSV's argmax)
    scored by scikit-learn."""
    frame = _stored(graph, "analysis/class_evaluation")
    table = _stored(graph, "analysis/quality_table/image").set_index("image_id")
    truth = pd.Series(crops.given)
    predicted = _probabilities(crops).idxmax(axis=1)
    assert set(frame.metric) > {"all", "data/brightness", "data/sharpness", "data/area"}
    last = frame.groupby("metric").bucket.transform("max") == frame.bucket
    checked = 0
    for row, is_last in zip(frame.itertuples(), last, strict=True):
        if row.metric == "all":
            ids = table.index
        else:
            values = pd.to_numeric(table[row.metric], errors="coerce")
            inside = (values >= row.lo) & ((values <= row.hi) if is_last else (values < row.hi))
            ids = table.index[inside.to_numpy()]
        assert row.n_images == len(ids)
        if not len(ids):
            continue
        y, p = truth[ids].to_numpy(), predicted[ids].to_numpy()
        assert row.accuracy == pytest.approx(accuracy_score(y, p), abs=1e-12)
        assert row.macro_f1 == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
        present = sorted(set(y))
        recall = recall_score(y, p, labels=present, average=None)
        expected = dict(zip(present, recall, strict=True))
        assert json.loads(row.recall) == pytest.approx(expected, abs=1e-12)
        checked += 1
    assert checked >= 5 * 15  # every bucket of every image metric


def test_planted_label_flips_rank_first(crops, graph):
    """Precision at k (k = the number of flips) of the lowest label quality, and the flips
    among cleanlab's issues: far above the flip rate (the simulated model itself is wrong on
    about 30% of the images, so not every doubted label is a flip)."""
    quality = _stored(graph, "model/label_quality").sort_values("value")
    k = len(crops.flipped)
    precision = len(set(quality.image_id.head(k)) & crops.flipped) / k
    assert k >= 10 and precision >= 0.6  # 0.74 with this seed; chance: k / 164 = 0.12
    issues = _stored(graph, "analysis/class_label_issues")
    flagged = set(issues.image_id)
    assert len(flagged & crops.flipped) >= 0.8 * k  # recall of the flips
    assert (issues["rank"].to_numpy() == np.arange(1, len(issues) + 1)).all()
    assert issues.label_quality.is_monotonic_increasing
    flips = issues[issues.image_id.isin(crops.flipped)]
    truth = flips.image_id.map(crops.truth)
    assert (flips.suggested == truth).mean() >= 0.8  # the model suggests the real class


def test_report_summarises_the_classification(graph):
    page = next(Path(graph.storage).rglob(f"{VERSION}.html")).read_text()
    assert "Classification: accuracy by slice" in page and "labels doubted</a> (cleanlab)" in page
    whole = _stored(graph, "analysis/class_evaluation").query("metric == 'all'").iloc[0]
    assert f"accuracy {whole.accuracy:.4g}" in page


def test_class_share_drift_holds_on_random_halves_and_fires_on_a_shifted_mix(graph):
    """Drift of the labels' and the predicted classes' shares: two random halves of the
    version do not drift; the half without its people does."""
    table = _stored(graph, "analysis/quality_table/image")
    rng = np.random.default_rng(1)
    half = rng.permutation(len(table)) < len(table) // 2
    empty = pd.DataFrame({"image_id": []})
    tables = {
        level: {"image": frame, "object": empty, "prediction": None}
        for level, frame in (("a", table[half]), ("b", table[~half]))
    }
    same = version_drift(tables["a"], tables["b"])
    rows = same[same.metric.str.contains("class_shares")].set_index("metric")
    assert set(rows.index) == {"class_shares", "predicted_class_shares@sim"}
    assert (rows.verdict != "drift").all()
    people = table[~half]
    fewer = people[people["class"] != "person"]
    shifted = version_drift(tables["a"], {**tables["b"], "image": fewer})
    rows = shifted[shifted.metric.str.contains("class_shares")].set_index("metric")
    assert (rows.verdict == "drift").all()


def test_import_reports_orphans_unknown_classes_and_bad_probabilities(tmp_path, crops):
    labels = tmp_path / "labels.csv"
    files = sorted(crops.given)[:6]
    good = [(f, crops.given[f]) for f in files]
    pd.DataFrame([*good, ("gone.jpg", "cup")], columns=["file_name", "label"]).to_csv(
        labels, index=False
    )
    pd.DataFrame([*good, ("x.jpg", "zebra")], columns=["file_name", "label"]).to_csv(
        tmp_path / "unknown.csv", index=False
    )
    root = str(tmp_path / "datasets")
    version = import_classification(str(crops.images), root, "v1", labels=str(labels), names=None)
    reasons = [i.reason for i in version.import_issues()]
    assert reasons == ["label of gone.jpg: no such image"]
    with pytest.raises(DatasetError, match=r"line 8: label of x\.jpg: no such image"):
        import_classification(
            str(crops.images), root, "v2", labels=str(tmp_path / "unknown.csv"), strict=True
        )
    bad = pd.read_csv(crops.probabilities).head(4)
    bad.loc[2, "cup"] = -0.5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError, match=r"bad.csv at line 4: probabilities must be"):
        import_classification(str(crops.images), root, "v3", predictions=str(tmp_path / "bad.csv"))


def test_json_probabilities_by_class_name(tmp_path, crops):
    probs = _probabilities(crops).head(5)
    records = [
        {"file_name": f, "probabilities": {c: float(row[c]) for c in reversed(CLASSES)}}
        for f, row in probs.iterrows()
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(records))
    names, matrix = cls.read_probabilities(str(path), CLASSES)
    assert names.tolist() == probs.index.tolist()
    np.testing.assert_allclose(matrix, probs.to_numpy(), rtol=1e-12)


def test_detection_versions_have_empty_classification_tables(demo):
    storage = Path(demo.settings.storage)
    for key in (
        "dataset/classifications",
        "dataset/class_predictions",
        "analysis/class_evaluation",
    ):
        assert pd.read_parquet(storage / key / "train.parquet").empty
    table = pd.read_parquet(storage / "analysis/quality_table/image/train.parquet")
    assert "class" not in table
    assert not [c for c in table if c.split("@")[0] in cls.METRICS or c.startswith("predicted@")]


def test_cli_imports_class_folders_with_probabilities(tmp_path, crops, capsys):
    from qm_dagster.cli import main

    root = tmp_path / "datasets"
    argv = ["import", "cli-cls", "--format", "classification", "--images", str(crops.images)]
    extra = ["--predictions", str(crops.probabilities), "--model", "sim", "--to", str(root)]
    assert main([*argv, *extra]) == 0
    assert "imported" in capsys.readouterr().out
    version = DatasetRoot(str(root)).version("cli-cls")
    assert cls.version_classes(version) == CLASSES  # the probability file's column order
    labels, orphans = cls.read_labels(version, pd.Series(sorted(crops.given)))
    assert labels.set_index("image_id").label.to_dict() == crops.given and orphans == []
    assert main([*argv, "--to", str(root)]) == 2  # exists: a message, not a traceback
    assert "already exists" in capsys.readouterr().err


def test_class_neighbour_agreement_equals_sklearn_neighbours(crops, graph):
    """Each labelled image's share of its nearest images (by the stored image embeddings,
    scikit-learn's exact search) that carry its label."""
    from sklearn.neighbors import NearestNeighbors

    from qm_dagster.embedding_metrics import AGREEMENT_NEIGHBOURS

    stored = _stored(graph, "data/embeddings")
    vectors = np.stack(stored.vector.to_numpy()).astype(np.float32)
    labels = stored.image_id.map(crops.given).to_numpy()
    k = AGREEMENT_NEIGHBOURS
    _, found = NearestNeighbors(n_neighbors=k + 1).fit(vectors).kneighbors(vectors)
    found = np.array([[j for j in row if j != i][:k] for i, row in enumerate(found)])
    expected = (labels[found] == labels[:, None]).mean(axis=1)
    got = _stored(graph, "label/class_neighbour_agreement").set_index("image_id").value
    np.testing.assert_allclose(got.loc[stored.image_id].to_numpy(), expected, atol=1e-12)
    table = _stored(graph, "analysis/quality_table/image").set_index("image_id")
    assert table["label/class_neighbour_agreement"].notna().all()
    # a flipped label disagrees with its neighbours more often than a kept one
    flipped = got.index.isin(list(crops.flipped))
    assert got[flipped].mean() < got[~flipped].mean()


def test_checks_on_class_evaluation(graph, tmp_path):
    """A checks.yaml test case on accuracy by slice: evaluated when analysis/class_evaluation
    materializes, its measured value the table's."""
    import dagster as dg

    checks = tmp_path / "checks.yaml"
    whole = _stored(graph, "analysis/class_evaluation").query("metric == 'all'").iloc[0]
    checks.write_text(
        "checks:\n"
        "  - {name: fair_accuracy, target: class_evaluation, model: sim, stat: accuracy,"
        f" op: '>=', value: {whole.accuracy - 0.01}}}\n"
        "  - {name: perfect_small_crops, target: class_evaluation, model: sim,"
        " metric: data/area, bucket: 0, stat: macro_f1, op: '>=', value: 0.99}\n"
    )
    settings = replace(graph, checks=str(checks))
    key = dg.AssetKey(["analysis", "class_evaluation"])
    result = materialize_version(settings, VERSION, selection=[key])
    outcomes = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert outcomes["fair_accuracy"].passed
    assert outcomes["fair_accuracy"].metadata["value"].value == pytest.approx(whole.accuracy)
    assert not outcomes["perfect_small_crops"].passed


def test_explorer_filters_a_classification_version_by_label(graph):
    """``qm explore`` on a classification version: its classes are the labels, a class
    filter selects by the ``class`` column, sorting by a model metric equals pandas, and the
    filter saved as a slice is a pandas filter on that column."""
    from qm_dagster.explore.query import Query, VersionData
    from qm_dagster.slices import apply, parse_slices

    data = VersionData(graph, VERSION)
    table = _stored(graph, "analysis/quality_table/image")
    assert data.classes() == sorted(table["class"].dropna().unique())
    query = Query(classes=("bird", "cup"), sort="model/label_quality@sim", limit=500)
    page = data.page(query)
    want = table[table["class"].isin(["bird", "cup"])].sort_values(
        ["model/label_quality@sim", "image_id"], kind="stable"
    )
    assert page["total"] == len(want) > 0
    assert [r["image_id"] for r in page["rows"]] == want.image_id.tolist()
    assert [r["category"] for r in page["rows"]] == want["class"].tolist()  # the card's label
    saved = data.as_slice(query, "birds_and_cups")
    (chosen,) = parse_slices(yaml.safe_load(saved["yaml"])["slices"])
    assert sorted(apply(chosen, table).image_id) == sorted(want.image_id)
