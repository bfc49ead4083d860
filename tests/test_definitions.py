"""The Dagster layer: definitions load, every asset is described and partitioned, dg check passes,
and the engine stays free of Dagster."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import dagster as dg
import pytest

from definitions import build_definitions
from qm_dagster.config import Settings
from qm_dagster.metrics import metrics
from tests.conftest import PROJECT
from tests.test_image_metrics import PIXEL_METRICS

EXPECTED_IMAGE_METRICS = {
    *PIXEL_METRICS,
    "width",
    "height",
    "aspect_ratio",
    "area",
    "object_count",
    "object_density",
}


def test_definitions_load_with_every_image_metric(tmp_path):
    defs = build_definitions(Settings(datasets=str(tmp_path), storage=str(tmp_path / "s")))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {f"data/{m}" for m in EXPECTED_IMAGE_METRICS} <= keys
    assert {"dataset/manifest", "dataset/data_issues", "dataset/annotations"} <= keys
    assert {m.name for m in metrics("image", ())} == EXPECTED_IMAGE_METRICS
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, key
        assert node.partitions_def == dg.DynamicPartitionsDefinition(name="dataset_versions")
        assert node.group_name == key.path[0]
        assert node.code_version


def test_the_reference_is_a_declared_dependency_in_the_asset_graph(tmp_path):
    """Drift, duplicates and the report read the reference through reference/* aliases, each of
    which depends on every partition of the table it points into: lineage shows the link."""
    defs = build_definitions(Settings(datasets=str(tmp_path), storage=str(tmp_path / "s")))
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey.from_user_string
    expected = {
        "analysis/drift": {
            "analysis/quality_table/image",
            "analysis/quality_table/object",
            "analysis/quality_table/prediction",
        },
        "analysis/report": {"analysis/quality_table/image"},
        "analysis/duplicates": {"dataset/manifest", "data/embeddings"},
    }
    for dependant, sources in expected.items():
        parents = {p.to_user_string() for p in graph.get(key(dependant)).parent_keys}
        for source in sources:
            alias = f"reference/{source}"
            assert alias in parents, (dependant, alias)
            assert {p.to_user_string() for p in graph.get(key(alias)).parent_keys} == {source}
            mapping = graph.get_partition_mapping(key(alias), key(source))
            assert isinstance(mapping, dg.AllPartitionMapping)
            assert graph.get(key(alias)).group_name == "reference"


def test_dg_check_defs_passes():
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "check", "defs"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr


def imported_modules(path: Path) -> list[str]:
    """Absolute module names a Python file imports (anywhere in it, lazy imports too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_engine_imports_no_dagster():
    offenders = []
    for path in (PROJECT / "qm_dagster").rglob("*.py"):
        if path.name == "cli_dagster.py":  # the CLI's materialize command drives Dagster
            continue
        if path.name == "instance_storage.py":  # dagster.yaml's storage class: every Dagster
            continue  # process imports it before any code location, so it ships in the package
        offenders += [
            f"{path.name}: {n}"
            for n in imported_modules(path)
            if n.split(".")[0].startswith("dagster")
        ]
    assert offenders == []


def test_every_runtime_import_is_declared_in_pyproject():
    """What the product imports at run time (engine, Dagster layer, composition root) comes
    from a distribution pyproject.toml names, not from whatever another package pulled in."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {canonical(re.match(r"[A-Za-z0-9_.-]+", r)[0]) for r in project["dependencies"]}
    local = {"qm_dagster", "assets", "resources", "definitions"}
    files = [f for d in ("qm_dagster", "assets", "resources") for f in (PROJECT / d).rglob("*.py")]
    modules = {
        name.split(".")[0]
        for path in [*files, PROJECT / "definitions.py"]
        for name in imported_modules(path)
    }
    third_party = modules - local - set(sys.stdlib_module_names)
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        m: providers.get(m)
        for m in sorted(third_party)
        if not any(canonical(d) in declared for d in providers.get(m, []))
    }
    assert undeclared == {}


def test_inputs_with_columns_load_only_those_columns(tmp_path):
    """An input declared with COLUMNS loads just those columns of the stored Parquet file (the
    quality tables read the manifest's base columns, not its URLs and hashes; predictions read
    only the manifest's image ids); an undeclared input loads the whole table."""
    import pandas as pd
    import pyarrow.parquet as pq

    from qm_dagster import storage
    from qm_dagster.quality_table import IMAGE_BASE
    from resources.io_manager import COLUMNS, ParquetIOManager

    manager = ParquetIOManager(base_url=str(tmp_path))
    url = storage.asset_url(str(tmp_path), "dataset/manifest", "v1")
    frame = pd.DataFrame({"image_id": [1, 2], "url": ["a", "b"], "blake2b": ["x", "y"]})
    storage.write_parquet(url, frame)
    assert pq.read_schema(url).names == ["image_id", "url", "blake2b"]

    def load(metadata):
        context = dg.build_input_context(
            asset_key=["dataset", "manifest"], partition_key="v1", definition_metadata=metadata
        )
        return manager.load_input(context)

    assert list(load({COLUMNS: ["image_id"]}).columns) == ["image_id"]
    assert load({COLUMNS: ["image_id"]}).image_id.tolist() == [1, 2]
    pd.testing.assert_frame_equal(load(None), frame)

    defs = build_definitions(Settings(datasets=str(tmp_path), storage=str(tmp_path / "s")))
    manifest = dg.AssetKey(["dataset", "manifest"])
    quality = defs.resolve_assets_def(dg.AssetKey(["analysis", "quality_table", "image"]))
    predictions = defs.resolve_assets_def(dg.AssetKey(["dataset", "predictions"]))
    for asset, columns in ((quality, IMAGE_BASE), (predictions, ["image_id"])):
        names = [n for n, k in asset.keys_by_input_name.items() if k == manifest]
        (spec,) = [i for i in asset.node_def.input_defs if i.name in names]
        assert spec.metadata[COLUMNS] == columns


def test_bucket_edges_of_an_unknown_metric_fail_by_name(tmp_path):
    from qm_dagster.errors import QmError

    settings = Settings(
        datasets=str(tmp_path),
        storage=str(tmp_path / "s"),
        bucket_edges=(("data/brightnes", (0.0, 0.5, 1.0)), ("data/brightness", (0.0, 1.0))),
    )
    with pytest.raises(QmError, match="bucket_edges names no metric: data/brightnes;"):
        build_definitions(settings)
