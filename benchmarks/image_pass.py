"""Benchmark of the image pass on real JPEGs from ../shared/data, all ratios measured in one run.

Prints images/s and:
  (a) whole metric pass / decode-only pass          (1 worker; cost of the metrics over decoding)
  (b) one pass per metric / our single pass         (1 worker; the Encord Active way vs ours)
  (c) 1 worker / all workers                        (full pass through the process pool)
  (d) image + object metrics / image metrics        (1 worker; coco-val2014-fake100 with its
                                                     839 objects, polygons and RLE)
  peak RSS of the full pass at two dataset sizes    (fresh process per size)

Usage: python benchmarks/image_pass.py [--data ../shared/data] [--repeat 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Only the standard library and the light config module at module level: pool workers re-import
# the main script (CPython's forkserver and spawn do), so a heavy main is paid per worker start.

ROOT = Path(__file__).resolve().parents[1]
ARGS = argparse.Namespace(data=str(ROOT.parent / "shared" / "data"))


def real_jpegs(data: Path) -> list[str]:
    files = sorted(str(p) for p in data.rglob("*.jpg"))
    if not files:
        sys.exit(f"no JPEGs under {data}")
    return files


def manifest(files: list[str], repeat: int):
    import pandas as pd

    from qm_dagster.manifest import inspect_bytes

    facts = {f: inspect_bytes(Path(f).read_bytes(), 10**12) for f in files}
    rows = [
        {
            "image_id": f"{i}:{f}",
            "url": f,
            "content_hash": facts[f].content_hash,
            "bytes": facts[f].bytes,
            "ok": True,
            "width": facts[f].width,
            "height": facts[f].height,
        }
        for i in range(repeat)
        for f in files
    ]
    return pd.DataFrame(rows)


def fresh_pass(frame, specs, workers: int):
    """The full pass with nothing reused, into a throw-away storage folder."""
    import tempfile

    from qm_dagster.passes.image_pass import measure_images

    with tempfile.TemporaryDirectory() as out:
        return measure_images(frame, specs, out, "bench", workers=workers, reuse=False)


def request(image_keys=(), object_keys=()):
    """A worker request that keeps the chunk's values in memory (no cache)."""
    from qm_dagster.passes.decode import PassRequest

    return PassRequest(
        image_keys=tuple(image_keys),
        object_keys=tuple(object_keys),
        image_fps=tuple(image_keys),
        object_fps=tuple(object_keys),
    )


def best_of(runs: int, *fns) -> list[float]:
    """Best wall time of each function over ``runs`` rounds, the functions interleaved in each
    round so that drifts in machine speed hit all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(runs):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def coco_items():
    """The coco-val2014-fake100 images present offline, each with its annotated objects."""
    from qm_dagster.coco import load_json, parse_instances
    from qm_dagster.passes.decode import ImageItem, ObjectItem

    folder = Path(ARGS.data) / "coco-val2014-fake100"
    path = folder / "instances_val2014_100.json"
    coco = parse_instances(load_json(path.read_bytes(), str(path)), str(path))
    items = []
    for image_id, name in zip(coco.images.image_id, coco.images.file_name, strict=True):
        if not (folder / "images" / name).is_file():
            continue
        anns = coco.annotations[coco.annotations.image_id == image_id]
        objects = tuple(
            ObjectItem(
                int(a.annotation_id), (a.bbox_x, a.bbox_y, a.bbox_w, a.bbox_h), a.segmentation, {}
            )
            for a in anns.itertuples()
        )
        items.append(ImageItem(image_id, str(folder / "images" / name), objects))
    return items


def decode_only(items) -> None:
    from qm_dagster.passes.decode import decode
    from qm_dagster.storage import read_bytes

    for item in items:
        decode(read_bytes(item.url))


def rss_of_full_pass(data: str, repeat: int) -> dict[str, float]:
    """Run the full pass in a fresh process (``--rss-probe``) and read its peak RSS."""
    out = subprocess.run(
        [sys.executable, __file__, "--data", data, "--rss-probe", str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_rss_mb(pids: set[int]) -> dict[int, float]:
    """VmHWM (peak resident set) of each live process in ``pids``, in MB."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        out[pid] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as fh:
                kids = {int(k) for k in fh.read().split()}
        except OSError:
            kids = set()
        frontier.extend(kids - found)
        found |= kids
    return found


def rss_probe(files: list[str], repeat: int) -> None:
    """Full pass with all workers; a thread samples every process's peak RSS from /proc."""
    import threading

    from qm_dagster.metrics import load_metrics, metrics

    load_metrics()
    frame = manifest(files, repeat)
    peaks: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peaks.update(_peak_rss_mb(_descendants(os.getpid())))

    sampler = threading.Thread(target=sample)
    sampler.start()
    specs = [s for s in metrics("image", ()) if s.reads_pixels or s.reads == "header"]
    result = fresh_pass(frame, specs, os.cpu_count() or 1)
    done.set()
    sampler.join()
    workers = sorted(peaks.values())
    print(
        json.dumps(
            {
                "images": len(frame),
                "seconds": result.seconds,
                "self_mb": _peak_rss_mb({os.getpid()})[os.getpid()],
                "child_mb": max(workers, default=0.0),
            }
        )
    )


def main() -> None:
    import cv2
    from PIL import Image

    from qm_dagster.metrics import load_metrics, metrics
    from qm_dagster.passes.decode import ImageItem, init_worker, measure_chunk

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=4, help="copies of the set for (c) and RSS")
    parser.add_argument("--runs", type=int, default=5, help="timings per measurement (best kept)")
    parser.add_argument("--rss-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global ARGS
    ARGS = args
    if args.rss_probe:
        return rss_probe(real_jpegs(Path(args.data)), args.rss_probe)

    load_metrics()
    files = real_jpegs(Path(args.data))
    cores = os.cpu_count() or 1
    pixel_keys = [s.asset_key for s in metrics("image", ()) if s.reads_pixels]
    object_keys = [s.asset_key for s in metrics("object", ()) if s.reads_pixels]
    items = [ImageItem(f, f) for f in files]
    image_pass = request(pixel_keys)
    init_worker(())
    w, h = zip(*(Image.open(f).size for f in files), strict=True)
    print(
        f"{len(files)} real JPEGs, mean {sum(w) / len(w):.0f}x{sum(h) / len(h):.0f}; "
        f"{len(pixel_keys)} pixel metrics; OpenCV {cv2.__version__}; {cores} cores"
    )

    t_decode, t_single = best_of(
        args.runs, lambda: decode_only(items), lambda: measure_chunk(items, image_pass)
    )
    t_each = sum(
        best_of(
            args.runs,
            *(lambda k=k: measure_chunk(items, request((k,))) for k in pixel_keys),
        )
    )
    print(f"decode only          : {len(files) / t_decode:7.1f} images/s")
    print(f"single pass, 1 worker: {len(files) / t_single:7.1f} images/s")
    print(f"(a) full pass / decode-only        = {t_single / t_decode:.2f}  (target <= 2.0)")
    print(f"(b) pass per metric / single pass  = {t_each / t_single:.2f}  (target >= 6)")

    big = manifest(files, args.repeat)
    specs = [s for s in metrics("image", ()) if s.reads_pixels or s.reads == "header"]
    t1, tn = best_of(
        args.runs,
        lambda: fresh_pass(big, specs, 1),
        lambda: fresh_pass(big, specs, cores),
    )
    print(
        f"full pass, {len(big)} images: 1 worker {len(big) / t1:.1f} images/s, "
        f"{cores} workers {len(big) / tn:.1f} images/s"
    )
    print(f"(c) 1 worker / {cores} workers        = {t1 / tn:.2f}  (target >= 1.8 on 2 cores)")

    coco = coco_items()
    with_objects = request(pixel_keys, object_keys)
    t_img, t_obj = best_of(
        args.runs,
        lambda: measure_chunk(coco, image_pass),
        lambda: measure_chunk(coco, with_objects),
    )
    n_obj = sum(len(i.objects) for i in coco)
    print(
        f"(d) image + {len(object_keys)} object metrics / image metrics = {t_obj / t_img:.2f}  "
        f"(target <= 1.30; {len(coco)} images, {n_obj} objects)"
    )

    for repeat in (1, args.repeat * 4):
        r = rss_of_full_pass(args.data, repeat)
        print(
            f"peak RSS, {r['images']:5d} images, {cores} workers: parent {r['self_mb']:.0f} MB, "
            f"largest other process {r['child_mb']:.0f} MB ({r['seconds']:.1f} s)"
        )


if __name__ == "__main__":
    main()
