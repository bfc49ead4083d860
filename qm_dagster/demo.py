"""The demo dataset: real photos shipped in pip wheels plus generated scenes with exact labels.

Three versions: ``train`` (kind train), ``validation`` (same distribution) and ``production``
(darker and blurrier, reference ``train``), each with COCO annotations and simulated detections
of a model ``demo_detector`` that gets worse on dark, blurry images. Deterministic (fixed seeds),
no download at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from qm_dagster.dataset import Version
from qm_dagster.layout import VersionWriter

CATEGORIES = ["box", "disc", "triangle"]
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "camera",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
)
SCENE_SIZE = (480, 640)  # height, width


def photos() -> list[tuple[str, np.ndarray]]:
    """Real photos as RGB arrays: scikit-image's bundled samples and scikit-learn's two."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        out.append((name, np.dstack([img] * 3) if img.ndim == 2 else img[..., :3]))
    sample = load_sample_images()
    for path, img in zip(sample.filenames, sample.images, strict=True):
        out.append((path.rsplit("/", 1)[-1].rsplit(".", 1)[0], img))
    return out


@dataclass
class Scene:
    """A generated RGB image with its objects: (category, polygon [x0,y0,x1,y1,...])."""

    rgb: np.ndarray
    objects: list[tuple] = field(default_factory=list)  # (category, polygon[, track id])


def _shape_polygon(rng: np.random.Generator, category: str, w: int, h: int) -> list[float]:
    size = rng.uniform(24, 140)
    cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
    if category == "box":
        bw, bh = size, size * rng.uniform(0.5, 1.5)
        pts = [
            (cx - bw / 2, cy - bh / 2),
            (cx + bw / 2, cy - bh / 2),
            (cx + bw / 2, cy + bh / 2),
            (cx - bw / 2, cy + bh / 2),
        ]
    elif category == "disc":
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = [(cx + size / 2 * np.cos(a), cy + size / 2 * np.sin(a)) for a in angles]
    else:
        pts = [(cx, cy - size / 2), (cx + size / 2, cy + size / 2), (cx - size / 2, cy + size / 2)]
    clipped = [(float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))) for x, y in pts]
    return [round(c, 2) for p in clipped for c in p]


def scene(rng: np.random.Generator) -> Scene:
    """A textured gradient background with 1-6 coloured shapes."""
    h, w = SCENE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 200, 3)
    tilt = rng.uniform(-0.15, 0.15, 3)
    img = base + tilt * (xx[..., None] - w / 2) * 0.5 + tilt[::-1] * (yy[..., None] - h / 2) * 0.5
    img += rng.normal(0, 12, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, 7))):
        category = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
        poly = _shape_polygon(rng, category, w, h)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        pts = np.round(np.array(poly).reshape(-1, 2)).astype(np.int32)
        cv2.fillPoly(img, [pts], color)
        objects.append((category, poly))
    return Scene(img, objects)


def sequence(rng: np.random.Generator, frames: int = 8) -> list[Scene]:
    """A short video: three tracked shapes moving right. Track 1 is missing in frame 4 (a gap),
    track 2 is labelled ``disc`` then ``box`` from frame 5 (a class flip), track 3 turns from a
    triangle into a box at frame 6 (a shape change). Objects carry their track id."""
    h, w = SCENE_SIZE
    background = scene(rng).rgb
    background[:] = cv2.GaussianBlur(background, (0, 0), 3)
    out = []
    for f in range(frames):
        img = background.copy()
        objects = []
        tracks = [
            (1, "box", [(60, 60), (140, 60), (140, 140), (60, 140)], f != 4),
            (
                2,
                "disc" if f < 5 else "box",
                [
                    (300 + 40 * np.cos(a), 240 + 40 * np.sin(a))
                    for a in np.linspace(0, 2 * np.pi, 24, endpoint=False)
                ],
                True,
            ),
            (
                3,
                "triangle" if f < 6 else "box",
                [(450, 420), (500, 340), (550, 420)]
                if f < 6
                else [(450, 340), (550, 340), (550, 420), (450, 420)],
                True,
            ),
        ]
        for track, category, pts, visible in tracks:
            if not visible:
                continue
            poly = [
                round(
                    float(
                        np.clip(c + (12 * f if i % 2 == 0 else 0), 0, (w if i % 2 == 0 else h) - 1)
                    ),
                    2,
                )
                for p in pts
                for i, c in enumerate(p)
            ]
            cv2.fillPoly(
                img,
                [np.round(np.array(poly).reshape(-1, 2)).astype(np.int32)],
                (200, 60 + 50 * track, 40),
            )
            objects.append((category, poly, track))
        out.append(Scene(img, objects))
    return out


def darker_blurrier(rgb: np.ndarray) -> np.ndarray:
    """The production shift: 45% of the light, then a Gaussian blur (sigma 2.5)."""
    dark = cv2.convertScaleAbs(rgb, alpha=0.45, beta=0)
    return cv2.GaussianBlur(dark, (0, 0), 2.5)


def _bbox(poly: list[float]) -> list[float]:
    xs, ys = poly[0::2], poly[1::2]
    return [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def _detections(rng, image_id, objects, recall, score_hi, jitter):
    dets = []
    for category, poly in objects:
        if rng.random() > recall:
            continue
        x, y, w, h = _bbox(poly)
        dx, dy = rng.normal(0, jitter * w), rng.normal(0, jitter * h)
        wrong = rng.random() < 0.08
        cat = CATEGORIES[int(rng.integers(0, 3))] if wrong else category
        dets.append(
            {
                "image_id": image_id,
                "category_id": CATEGORIES.index(cat) + 1,
                "bbox": [
                    round(x + dx, 2),
                    round(y + dy, 2),
                    round(w * rng.uniform(0.9, 1.1), 2),
                    round(h * rng.uniform(0.9, 1.1), 2),
                ],
                "score": round(float(rng.uniform(0.5, score_hi)), 4),
            }
        )
    for _ in range(int(rng.integers(0, 3))):
        dets.append(
            {
                "image_id": image_id,
                "category_id": int(rng.integers(1, 4)),
                "bbox": [
                    round(float(rng.uniform(0, 500)), 2),
                    round(float(rng.uniform(0, 380)), 2),
                    round(float(rng.uniform(20, 120)), 2),
                    round(float(rng.uniform(20, 100)), 2),
                ],
                "score": round(float(rng.uniform(0.05, 0.5)), 4),
            }
        )
    return dets


@dataclass
class DemoVersion:
    name: str
    kind: str
    reference: str | None
    seed: int
    scenes: int
    transform: Callable[[np.ndarray], np.ndarray] | None
    recall: float
    description: str
    with_sequence: bool = False


VERSIONS = (
    DemoVersion(
        "train",
        "train",
        None,
        1,
        40,
        None,
        0.9,
        "Training data: photos, scenes and a short tracked sequence",
        with_sequence=True,
    ),
    DemoVersion(
        "validation",
        "validation",
        "train",
        2,
        25,
        None,
        0.9,
        "Held-out data from the training distribution",
    ),
    DemoVersion(
        "production",
        "production",
        "train",
        3,
        40,
        darker_blurrier,
        0.6,
        "Production batch: darker, blurrier camera",
    ),
)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def write_version(root: str, spec: DemoVersion, overwrite: bool = False) -> Version:
    """Write one demo version (images, annotations.json, predictions, version.json last)."""
    rng = np.random.default_rng(spec.seed)
    shift = spec.transform or (lambda a: a)
    writer = VersionWriter(root, spec.name, overwrite=overwrite)
    images, annotations, dets = [], [], []
    for name, rgb in photos():
        y0 = int(rng.integers(0, max(1, rgb.shape[0] // 8)))
        x0 = int(rng.integers(0, max(1, rgb.shape[1] // 8)))
        crop = rgb[y0:, x0:]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        pixels = shift(np.ascontiguousarray(crop))
        file_name = f"photos/{name}.jpg"
        writer.add_image(file_name, _encode_jpeg(pixels))
        images.append(
            {
                "id": len(images) + 1,
                "file_name": file_name,
                "width": pixels.shape[1],
                "height": pixels.shape[0],
            }
        )
    generated = [(f"scenes/scene_{i:03d}.jpg", scene(rng), {}) for i in range(spec.scenes)]
    if spec.with_sequence:
        generated += [
            (f"sequence/frame_{f:03d}.jpg", s, {"video_id": "demo_cam", "frame_index": f})
            for f, s in enumerate(sequence(rng))
        ]
    for file_name, s, extra in generated:
        pixels = shift(s.rgb)
        image_id = len(images) + 1
        writer.add_image(file_name, _encode_jpeg(pixels))
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": pixels.shape[1],
                "height": pixels.shape[0],
                **extra,
            }
        )
        for category, poly, *track in s.objects:
            mask = np.zeros(pixels.shape[:2], np.uint8)
            cv2.fillPoly(mask, [np.round(np.array(poly).reshape(-1, 2)).astype(np.int32)], 1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORIES.index(category) + 1,
                    "bbox": _bbox(poly),
                    "segmentation": [poly],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    **({"track_id": track[0]} if track else {}),
                }
            )
        score_hi = 0.99 if spec.transform is None else 0.8
        dets += _detections(rng, image_id, [o[:2] for o in s.objects], spec.recall, score_hi, 0.04)
    writer.write_annotations(
        {
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)
            ],
        }
    )
    writer.write_predictions("demo_detector", dets)
    return writer.commit(kind=spec.kind, reference=spec.reference, description=spec.description)


def write_demo(root: str, overwrite: bool = False) -> list[Version]:
    """Write every demo version under ``root``; existing complete versions are kept unless ``overwrite``."""
    out = []
    for spec in VERSIONS:
        version = Version(root, spec.name)
        if version.is_complete() and not overwrite:
            out.append(version)
            continue
        out.append(write_version(root, spec, overwrite=True))
    return out
