"""Duplicates: planted exact and near copies of real photos are grouped; among the distinct
photos of ../shared/data only consecutive frames of one scene group (checked and kept as an
artifact); uniqueness is 0 for exact copies."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from qm_dagster.embeddings import crop_words, embed_bgr, gray_thumb, phash, thumbnail
from qm_dagster.similarity import duplicate_groups, uniqueness
from tests.conftest import PROJECT, SHARED_DATA

ARTIFACTS = PROJECT / "test-artifacts"


def distinct_photos() -> list[Path]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    seen, out = set(), []
    for path in sorted(SHARED_DATA.rglob("*.jpg")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(path)
    return out


def tables(named: dict[str, np.ndarray], version: str = "v") -> tuple[pd.DataFrame, pd.DataFrame]:
    images = pd.DataFrame(
        {
            "version": version,
            "image_id": list(named),
            "file_name": list(named),
            "content_hash": [
                hashlib.sha256(cv2.imencode(".png", im)[1]).hexdigest() for im in named.values()
            ],
        }
    )
    emb = pd.DataFrame(
        {
            "version": version,
            "image_id": list(named),
            "phash": [phash(im) for im in named.values()],
            "vector": [embed_bgr(im) for im in named.values()],
            "crops": crop_words(np.stack([gray_thumb(thumbnail(im)) for im in named.values()])),
        }
    )
    return images, emb


def test_planted_copies_are_found_and_distinct_photos_do_not_group():
    photos = distinct_photos()
    key = lambda p: str(p.relative_to(SHARED_DATA))  # noqa: E731 - file names repeat across sets
    named = {key(p): cv2.imread(str(p)) for p in photos}
    rng = np.random.default_rng(7)
    sources = [key(photos[i]) for i in rng.choice(len(photos), 12, replace=False)]
    planted = {}
    for k, name in enumerate(sources):
        im = named[name]
        h, w = im.shape[:2]
        copy = {
            0: im.copy(),
            1: cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], 1),
            2: cv2.resize(im, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
            3: im[int(h * 0.04) :, int(w * 0.04) :],
        }[k % 4]
        planted[f"copy_{k}_of_{name}"] = copy
    images, emb = tables({**named, **planted})
    groups = duplicate_groups(images, emb)
    by_group = groups.groupby("group").image_id.apply(set)
    for copy_name in planted:
        source = copy_name.split("_of_", 1)[1]
        assert any({copy_name, source} <= members for members in by_group), copy_name
    exact = groups[groups.kind == "exact"].image_id
    assert {f"copy_{k}_of_{n}" for k, n in enumerate(sources) if k % 4 == 0} <= set(exact)

    # groups among the original photos only: every one is a pair of consecutive frames of one
    # indoor scene from the robot camera of cartucho-voc85 (tiny camera motion): kept as an
    # image for review
    originals = [m - set(planted) for m in by_group]
    natural = [
        m for m in originals if len(m) > 1 and not (m & {n.split("_of_", 1)[1] for n in planted})
    ]
    cartucho = {key(p) for p in photos if key(p).startswith("cartucho-voc85/")}
    assert all(m <= cartucho for m in natural), natural
    assert len(natural) <= 5
    ARTIFACTS.mkdir(exist_ok=True)
    rows = [np.hstack([cv2.resize(named[n], (320, 240)) for n in sorted(m)[:2]]) for m in natural]
    if rows:
        cv2.imwrite(str(ARTIFACTS / "natural_near_duplicates.png"), np.vstack(rows))


def test_reference_version_duplicates_and_uniqueness(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    a = cv2.GaussianBlur(a, (0, 0), 3)
    b = np.roll(a, 40, axis=1)[:, ::-1].copy()
    ref_images, ref_emb = tables({"a.png": a, "b.png": b}, "ref")
    cur_images, cur_emb = tables({"a_again.png": a.copy(), "c.png": cv2.flip(b, 0)}, "cur")
    groups = duplicate_groups(pd.concat([ref_images, cur_images]), pd.concat([ref_emb, cur_emb]))
    assert len(groups) == 2 and set(groups.kind) == {"exact"}
    assert set(zip(groups.version, groups.image_id, strict=True)) == {
        ("ref", "a.png"),
        ("cur", "a_again.png"),
    }
    u = uniqueness(pd.concat([ref_emb, cur_emb], ignore_index=True))
    assert u[0] == 0.0 and u[2] == 0.0 and u[1] > 0 and u[3] > 0


PROVIDER = """
import numpy as np

def mean_color(image):
    return image.reshape(-1, 3).mean(axis=0) / 255.0
"""


def test_embedding_provider_function_and_file(settings, tmp_path, monkeypatch):
    import dataclasses

    from qm_dagster import load
    from tests.conftest import materialize_version
    from tests.images import commit, real_photos, write_image

    (tmp_path / "my_embedder.py").write_text(PROVIDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = Path(settings.datasets) / "v1"
    photos = real_photos()
    for name, rgb in photos.items():
        write_image(folder / "images" / f"{name}.png", rgb)
    commit(folder)
    run = dataclasses.replace(settings, embedding_provider="my_embedder:mean_color", workers=2)
    assert materialize_version(run, "v1").success
    emb = load("data/embeddings", "v1", run).set_index("image_id")
    for name, rgb in photos.items():
        expected = rgb.reshape(-1, 3).mean(axis=0) / 255.0
        assert np.asarray(emb.vector[f"{name}.png"]) == pytest.approx(expected, rel=1e-6)

    names = sorted(f"{n}.png" for n in photos)
    pd.DataFrame(
        {"file_name": names, "vector": [[float(i), 1.0] for i in range(len(names))]}
    ).to_parquet(tmp_path / "vectors-v1.parquet")
    run = dataclasses.replace(
        settings, embedding_provider=str(tmp_path / "vectors-{version}.parquet")
    )
    assert materialize_version(run, "v1").success
    emb = load("data/embeddings", "v1", run).set_index("image_id")
    assert [list(emb.vector[n]) for n in names] == [[float(i), 1.0] for i in range(len(names))]
