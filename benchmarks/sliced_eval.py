"""Benchmark: sliced evaluation against one whole-set faster-coco-eval run, on a generated
labelled version of the real photos (``scale_data.py``: 1-6 boxes of 10 classes per image and a
jittered "detector" with misses and false positives).

Prints, measured in this one run:

  (1) one whole-set faster-coco-eval run (COCO objects from the JSON files, evaluate,
      accumulate, summarize): seconds;
  (2) our sliced evaluation over every image-level metric of the registry x 5 quantile buckets
      (values drawn at random: the cost does not depend on them), from the version's tables and
      the stored matching: seconds, and the ratio to (1); the matching itself (its own asset)
      is timed apart;
  (3) pycocotools (the reference) on the whole version and, fresh, on ``--verify`` of the slices
      (all with ``--verify 0``): the largest difference of AP, AP50, AP75, AR100 and of the 12
      whole-version statistics.

Usage: python benchmarks/sliced_eval.py [--size 12000] [--verify 20] [--cache DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import scale_data  # noqa: E402


def tables(folder: Path):
    """The version's images, annotations, categories and predictions as the assets hold them."""
    from qm_dagster.dataset import DatasetRoot

    version = DatasetRoot(str(folder.parent)).version(folder.name)
    coco = version.instances()
    preds = version.predictions("detector", coco)
    return coco.images, coco.annotations, coco.categories, preds


def whole_faster(folder: Path) -> tuple[float, list[float]]:
    from faster_coco_eval import COCO, COCOeval_faster

    start = time.perf_counter()
    gt = COCO(str(folder / "annotations.json"))
    dt = gt.loadRes(str(folder / "predictions" / "detector.json"))
    ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return time.perf_counter() - start, list(ev.stats[:12])


def pycocotools_stats(gt, dt, image_ids=None) -> list[float]:
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, dt, "bbox")
    if image_ids is not None:
        ev.params.imgIds = [int(i) for i in image_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


def main() -> None:
    import numpy as np
    import pandas as pd
    from pycocotools.coco import COCO

    from qm_dagster.evaluation import STATS
    from qm_dagster.matching import matching
    from qm_dagster.metrics import load_metrics, metrics
    from qm_dagster.sliced import sliced_evaluation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=12_000)
    parser.add_argument("--verify", type=int, default=20, help="slices checked; 0 = all")
    parser.add_argument("--cache", type=Path, default=scale_data.CACHE)
    args = parser.parse_args()
    folder = scale_data.base_version(args.size, args.cache)
    images, annotations, categories, predictions = tables(folder)
    load_metrics(())
    names = [s.asset_key for s in metrics("image", ())]
    rng = np.random.default_rng(0)
    image_table = pd.DataFrame(
        {"image_id": images.image_id, **{n: rng.random(len(images)) for n in names}}
    )
    print(
        f"{folder.name}: {len(images)} images, {len(annotations)} objects, "
        f"{len(predictions)} predictions; {len(names)} image metrics x 5 buckets"
    )

    t_whole, fast_stats = whole_faster(folder)
    start = time.perf_counter()
    matches = matching(images, annotations, categories, predictions)
    t_match = time.perf_counter() - start
    start = time.perf_counter()
    frame = sliced_evaluation(images, annotations, categories, predictions, matches, image_table)
    t_sliced = time.perf_counter() - start
    slices = frame[frame.metric.str.startswith("data/")]
    print(f"(1) one whole-set faster-coco-eval run:     {t_whole:6.2f} s")
    print(f"(2) sliced evaluation, {len(slices)} image slices:  {t_sliced:6.2f} s")
    print(f"    sliced / whole run = {t_sliced / t_whole:.2f} (target <= 3)")
    print(f"    matching (model/matching, its own asset): {t_match:.2f} s")

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / "annotations.json"))
        dt = gt.loadRes(json.loads((folder / "predictions" / "detector.json").read_text()))
    overall = frame[frame.metric == "all"].iloc[0]
    reference = pycocotools_stats(gt, dt)
    worst_whole = max(abs(overall[k] - r) for k, r in zip(STATS, reference, strict=True))
    worst_fast = max(abs(a - b) for a, b in zip(fast_stats, reference, strict=True))
    table = image_table.set_index("image_id")
    checked = slices if args.verify == 0 else slices.sample(args.verify, random_state=0)
    worst = 0.0
    for row in checked.itertuples():
        values = table[row.metric]
        last = row.hi == values.max()
        inside = (values >= row.lo) & ((values <= row.hi) if last else (values < row.hi))
        fresh = pycocotools_stats(gt, dt, values.index[inside])
        ours = [getattr(row, k) for k in STATS]
        worst = max(worst, *(abs(a - b) for a, b in zip(ours, fresh, strict=True)))
    print(
        f"(3) vs pycocotools: 12 whole-version stats max |diff| {worst_whole:.1e} "
        f"(faster-coco-eval's own run {worst_fast:.1e}); {len(checked)} slices, fresh "
        f"evaluation of each subset, max |diff| of its 12 stats {worst:.1e}"
    )


if __name__ == "__main__":
    main()
