"""Generated dataset versions for ``benchmarks/scale.py``, written once to a cache folder.

Every image is a distinct 640x480 JPEG made from one of the real photos in ``../shared/data``
(random crop, flip, brightness and contrast, so no two share bytes), labelled with 1-6 boxes of
10 classes and a "detector" model whose predictions are the boxes jittered, with misses and
false positives. A derived version shares a fraction of a base version's images: hard links, so
the same bytes cost no disk; a tenth of the shared files are renamed (same bytes, new name).

Usage: python benchmarks/scale_data.py SIZE [SIZE ...] [--shared 0.9] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CACHE = Path(os.environ.get("QM_BENCH_CACHE", Path.home() / ".cache" / "qm-dagster-bench"))
CLASSES = [f"class_{i}" for i in range(10)]
W, H = 640, 480


def photos(data: Path = DATA) -> list[str]:
    files = sorted(str(p) for p in data.rglob("*.jpg"))
    if not files:
        sys.exit(f"no JPEGs under {data}")
    return files


def _image(args: tuple[int, int, list[str]]) -> bytes:
    """Image ``index`` of generation ``seed``: a random crop of one real photo, 640x480."""
    index, seed, sources = args
    rng = np.random.default_rng([seed, index])
    src = cv2.imread(sources[int(rng.integers(len(sources)))], cv2.IMREAD_COLOR)
    h, w = src.shape[:2]
    scale = rng.uniform(0.55, 1.0)
    ch, cw = max(16, int(h * scale)), max(16, int(w * scale))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = cv2.resize(src[y : y + ch, x : x + cw], (W, H), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.7, 1.3), beta=rng.uniform(-30, 30))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 93))])
    assert ok
    return buf.tobytes()


def _boxes(rng: np.random.Generator) -> list[tuple[int, list[float]]]:
    out = []
    for _ in range(int(rng.integers(1, 7))):
        bw, bh = rng.uniform(20, 300), rng.uniform(20, 240)
        x, y = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
        out.append((int(rng.integers(len(CLASSES))), [round(v, 2) for v in (x, y, bw, bh)]))
    return out


def _predictions(rng, image_id: int, boxes) -> list[dict]:
    preds = []
    for cls, (x, y, bw, bh) in boxes:
        if rng.random() < 0.15:  # missed
            continue
        j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
        if rng.random() < 0.05:
            cls = int(rng.integers(len(CLASSES)))
        box = [max(0.0, x + j[0]), max(0.0, y + j[1]), max(2.0, bw + j[2]), max(2.0, bh + j[3])]
        preds.append((cls, box, float(rng.uniform(0.3, 1.0))))
    for _ in range(int(rng.poisson(0.5))):  # false positives
        preds.append(
            (int(rng.integers(len(CLASSES))), _boxes(rng)[0][1], float(rng.uniform(0.05, 0.7)))
        )
    return [
        {
            "image_id": image_id,
            "category_id": c + 1,
            "bbox": [round(v, 2) for v in b],
            "score": round(s, 4),
        }
        for c, b, s in preds
    ]


def _write_version(
    folder: Path, files: list[tuple[int, str, int]], kind: str, reference: str | None
):
    """Annotations (boxes from each image's generation index), predictions, version.json last."""
    images, annotations, predictions = [], [], []
    for image_id, name, gen in files:
        rng = np.random.default_rng([7, gen])
        boxes = _boxes(rng)
        images.append({"id": image_id, "file_name": name, "width": W, "height": H})
        for cls, box in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": box,
                    "area": round(box[2] * box[3], 2),
                    "iscrowd": 0,
                }
            )
        predictions += _predictions(rng, image_id, boxes)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")))
    (folder / "predictions").mkdir(exist_ok=True)
    (folder / "predictions" / "detector.json").write_text(json.dumps(predictions))
    meta = {"kind": kind, "reference": reference, "created": "2026-12-01T00:00:00+00:00"}
    (folder / "version.json").write_text(json.dumps(meta))


def base_version(size: int, cache: Path = CACHE, workers: int = 2) -> Path:
    """``s<size>``: ``size`` distinct images (generation seed 1), written once."""
    folder = cache / f"s{size}"
    if (folder / "version.json").is_file():
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    sources = photos()
    names = [f"{i // 1000:04d}/img_{i:07d}.jpg" for i in range(size)]
    with Pool(workers) as pool:
        for i, data in enumerate(
            pool.imap(_image, ((i, 1, sources) for i in range(size)), chunksize=64)
        ):
            path = folder / "images" / names[i]
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    _write_version(folder, [(i + 1, n, i) for i, n in enumerate(names)], "train", None)
    return folder


def shared_version(size: int, shared: float = 0.9, cache: Path = CACHE, workers: int = 2) -> Path:
    """``s<size>-shared``: ``shared`` of ``s<size>``'s images (hard links; a tenth of them under a
    new name), the rest new images (generation seed 2); references ``s<size>``."""
    base = base_version(size, cache, workers)
    folder = cache / f"s{size}-shared"
    if (folder / "version.json").is_file():
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    keep = round(size * shared)
    files = []
    for i in range(keep):
        name = f"{i // 1000:04d}/img_{i:07d}.jpg"
        new = f"renamed/{i // 1000:04d}/r_{i:07d}.jpg" if i % 10 == 0 else name
        dst = folder / "images" / new
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(base / "images" / name, dst)
        files.append((i + 1, new, i))
    sources = photos()
    fresh = list(range(keep, size))
    with Pool(workers) as pool:
        for i, data in zip(
            fresh, pool.imap(_image, ((i, 2, sources) for i in fresh), chunksize=64), strict=True
        ):
            name = f"new/{i // 1000:04d}/n_{i:07d}.jpg"
            path = folder / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            files.append((i + 1, name, size + i))
    _write_version(folder, files, "production", f"s{size}")
    return folder


def unlabeled_version(size: int, cache: Path = CACHE, workers: int = 2) -> Path:
    """``s<size>-unlabeled``: ``s<size>``'s images alone (``images_root`` points at them; no
    annotations, no predictions), the input CleanVision and fastdup see."""
    base = base_version(size, cache, workers)
    folder = cache / f"s{size}-unlabeled"
    if not (folder / "version.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "production", "reference": None, "images_root": str(base / "images")}
        (folder / "version.json").write_text(json.dumps(meta))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int)
    parser.add_argument("--shared", type=float, default=0.9)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    for size in args.sizes:
        print(base_version(size, args.cache), flush=True)
        print(shared_version(size, args.shared, args.cache), flush=True)


if __name__ == "__main__":
    main()
