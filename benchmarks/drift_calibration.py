"""Drift calibration: false alarms on random splits, detection of planted shifts.

Every dataset of ``../shared/data`` with pixels (imported as a version) and a generated labelled
version (``scale_data``: real-photo crops, 1-6 boxes each) are measured once through Dagster
(quality tables and everything upstream), as is each planted copy of the generated version:
``dark`` (pixels x 0.6), ``blur`` (Gaussian, sigma 2), ``small`` (downscaled to half, boxes
too) and ``noclass`` (class_0's objects dropped). Then, with the default settings
(``qm_dagster.drift.version_drift``):

- false alarms: random splits of a version into two halves, images as units (all images of a
  real dataset; 2 x 50, 2 x 500 and 2 x 1000 images of the generated one); the share of tests
  per level whose verdict is ``drift``;
- detection: 2n distinct images of the generated version, n as the reference and the planted
  copies of the other n as the current version, n = 50 and 500; the share of repetitions in
  which each metric the shift changes is called ``drift``.

Usage: python benchmarks/drift_calibration.py [--splits 40] [--size 2200] [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import scale_data  # noqa: E402
from qm_dagster.config import Settings  # noqa: E402
from qm_dagster.drift import version_drift  # noqa: E402
from qm_dagster.importers import ImportSpec, import_version  # noqa: E402

DATA = scale_data.DATA
LEVELS = ("image", "object", "prediction")
TABLES = {level: f"analysis/quality_table/{level}" for level in LEVELS}
# The metrics each planted shift changes by construction (what must be detected).
SHIFTS = {
    "dark": ["data/brightness", "label/object_brightness"],
    "blur": ["data/sharpness", "data/blur", "label/object_sharpness"],
    "small": ["data/width", "data/height", "data/area", "label/object_area"],
    "noclass": ["class_shares"],
}


def real_specs() -> dict[str, ImportSpec]:
    """The datasets of ../shared/data that have pixels, as import specs."""
    coco = DATA / "coco-val2014-fake100"
    cartucho = DATA / "cartucho-voc85" / "input"
    db = DATA / "rafael-db-voc100"
    toy = DATA / "rafael-toy-voc10"
    specs = {
        "coco-fake100": ImportSpec(
            images=str(coco / "images"),
            format="coco",
            labels=str(coco / "instances_val2014_100.json"),
            predictions=str(coco / "results" / "instances_val2014_fakebbox100_results.json"),
            pred_format="coco",
            model="fake",
        ),
        "cartucho85": ImportSpec(
            images=str(cartucho / "images-optional"),
            format="txt-xyxy",
            labels=str(cartucho / "ground-truth"),
            predictions=str(cartucho / "detection-results"),
            pred_format="txt-xyxy",
            model="detector",
        ),
        "voc100": ImportSpec(
            images=str(db / "images"), format="voc", labels=str(db / "gts" / "pascalvoc_format")
        ),
        "toy12": ImportSpec(
            images=str(toy / "images"),
            format="voc",
            labels=str(toy / "gts_vocpascal_format"),
        ),
    }
    return {name: spec for name, spec in specs.items() if Path(spec.images).is_dir()}


def _planted(base: Path, root: Path, shift: str) -> Path:
    """A copy of version ``base`` with ``shift`` applied (same image ids and file names)."""
    folder = root / f"{base.name}-{shift}"
    if (folder / "version.json").is_file():
        return folder
    coco = json.loads((base / "annotations.json").read_text())
    for image in coco["images"]:
        src, dst = base / "images" / image["file_name"], folder / "images" / image["file_name"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if shift == "noclass":
            dst.write_bytes(src.read_bytes())
            continue
        pixels = cv2.imread(str(src))
        if shift == "dark":
            pixels = cv2.convertScaleAbs(pixels, alpha=0.6)
        elif shift == "blur":
            pixels = cv2.GaussianBlur(pixels, (0, 0), 2.0)
        elif shift == "small":
            pixels = cv2.resize(pixels, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            image["width"], image["height"] = pixels.shape[1], pixels.shape[0]
        cv2.imwrite(str(dst), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if shift == "small":
        for a in coco["annotations"]:
            a["bbox"] = [v / 2 for v in a["bbox"]]
            a["area"] = a["area"] / 4
    if shift == "noclass":
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != 1]
    (folder / "annotations.json").write_text(json.dumps(coco))
    (folder / "version.json").write_text(json.dumps({"kind": "production"}))
    return folder


def _measure(root: Path, storage: Path, versions: list[str]) -> dict[str, dict]:
    """Every version's quality tables, materialized through Dagster (in process)."""
    import dagster as dg

    from definitions import build_definitions
    from qm_dagster import storage as store

    settings = dataclasses.replace(
        Settings.load({}), datasets=str(root), storage=str(storage), workers=2, checks=""
    )
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    wanted = [dg.AssetKey(t.split("/")) for t in TABLES.values()]
    selection = dg.AssetSelection.assets(*wanted).upstream().resolve(defs.resolve_asset_graph())
    tables = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for version in versions:
            if not all(
                store.exists(store.asset_url(str(storage), t, version)) for t in TABLES.values()
            ):
                start = time.perf_counter()
                instance.add_dynamic_partitions("dataset_versions", [version])
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=version,
                    asset_selection=list(selection),
                    run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                )
                assert result.success, version
                print(f"  measured {version} in {time.perf_counter() - start:.0f} s", flush=True)
            tables[version] = {
                level: store.read_parquet(store.asset_url(str(storage), t, version))
                for level, t in TABLES.items()
            }
    return tables


def _rows(tables: dict, images) -> dict[str, pd.DataFrame]:
    return {level: t[t.image_id.isin(images)] for level, t in tables.items()}


def _alarms(result: pd.DataFrame, counts: dict) -> None:
    for level, rows in result.groupby("level"):
        tested = rows[rows.verdict.isin(["ok", "warning", "drift"])]
        counts[level][0] += int((tested.verdict == "drift").sum())
        counts[level][1] += len(tested)


def false_alarms(name: str, tables: dict, per_side: int | None, splits: int) -> dict:
    """Share of ``drift`` verdicts per level over random image splits of one version."""
    ids = tables["image"].image_id.unique()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rng = np.random.default_rng(0)
    for _ in range(splits):
        chosen = rng.permutation(ids)[: 2 * per_side] if per_side else rng.permutation(ids)
        half = len(chosen) // 2
        result = version_drift(_rows(tables, chosen[:half]), _rows(tables, chosen[half:]))
        _alarms(result, counts)
    label = f"{name} 2 x {per_side or len(ids) // 2}"
    print(
        f"  {label:28s} "
        + "  ".join(
            f"{level} {a / max(n, 1):6.2%} ({a}/{n})" for level, (a, n) in sorted(counts.items())
        ),
        flush=True,
    )
    return counts


def detection(base: dict, planted: dict, shift: str, per_side: int, repeats: int) -> None:
    """How often each metric the shift changes is called drift (base half vs planted half)."""
    ids = base["image"].image_id.unique()
    hits: dict[str, int] = defaultdict(int)
    others: dict[str, int] = defaultdict(int)
    rng = np.random.default_rng(1)
    for _ in range(repeats):
        chosen = rng.permutation(ids)[: 2 * per_side]
        result = version_drift(
            _rows(base, chosen[:per_side]), _rows(planted, chosen[per_side:])
        ).set_index("metric")
        for metric in SHIFTS[shift]:
            hits[metric] += metric in result.index and result.loc[metric, "verdict"] == "drift"
        for metric in result.index[result.verdict == "drift"]:
            if metric not in SHIFTS[shift]:
                others[metric] += 1
    rates = ", ".join(f"{m} {hits[m] / repeats:.0%}" for m in SHIFTS[shift])
    also = sorted(others, key=others.get, reverse=True)[:6]
    print(
        f"  {shift:8s} n={per_side:4d}: {rates}; also drift: "
        + (", ".join(f"{m} {others[m] / repeats:.0%}" for m in also) or "-"),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=40, help="random splits per setting")
    parser.add_argument("--size", type=int, default=2200, help="images of the generated version")
    parser.add_argument("--cache", type=Path, default=scale_data.CACHE)
    args = parser.parse_args()
    root = args.cache / "calibration" / "datasets"
    storage = args.cache / "calibration" / "storage"
    root.mkdir(parents=True, exist_ok=True)
    for name, spec in real_specs().items():
        if not (root / name / "version.json").is_file():
            shutil.rmtree(root / name, ignore_errors=True)
            import_version(spec, str(root), name, kind="train")
    generated = scale_data.base_version(args.size, args.cache)
    base = root / generated.name
    if not base.exists():
        base.symlink_to(generated)
    planted = [_planted(base, root, shift).name for shift in SHIFTS]
    versions = [*real_specs(), base.name, *planted]
    print(f"measuring {len(versions)} versions (cached under {storage})", flush=True)
    tables = _measure(root, storage, versions)

    print(f"\nfalse alarms (verdict 'drift'; {args.splits} random image splits each):")
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    settings = [(name, None) for name in real_specs()] + [(base.name, n) for n in (50, 500, 1000)]
    for name, per_side in settings:
        for level, (a, n) in false_alarms(name, tables[name], per_side, args.splits).items():
            total[level][0] += a
            total[level][1] += n
    print(
        "  all: "
        + "  ".join(f"{lvl} {a / max(n, 1):.2%} ({a}/{n})" for lvl, (a, n) in sorted(total.items()))
        + "  (target <= 5% per level)"
    )
    repeats = max(args.splits // 2, 5)
    print(f"\ndetection rate of planted shifts ({repeats} repetitions each; target 100% at 500):")
    for shift in SHIFTS:
        for per_side in (50, 500):
            detection(tables[base.name], tables[f"{base.name}-{shift}"], shift, per_side, repeats)


if __name__ == "__main__":
    main()
