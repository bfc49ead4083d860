"""Neighbour search at scale against brute force computed here: the inverted-file index finds
every planted near copy an exact search finds, hash pairs equal an all-pairs popcount, and crop
hashes (matrix products) match OpenCV's resize + DCT of each crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from qm_dagster.embeddings import CROP_MARGINS, THUMB
from qm_dagster.neighbours import crop_distances, crop_hash_words, hash_pairs, knn


def clustered(n: int, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 50 centres, the last 200 rows near copies of the first 200."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.normal(size=(n, d))
    x[-200:] = x[:200] + 0.002 * rng.normal(size=(200, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.arange(200)


def test_exact_knn_equals_brute_force():
    x, _ = clustered(600)
    dist, idx = knn(x, 3)
    full = cdist(x.astype(np.float64), x.astype(np.float64))
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :3]
    np.testing.assert_allclose(dist, expected, rtol=0, atol=1e-6)
    assert (idx != np.arange(len(x))[:, None]).all()


@pytest.mark.parametrize("flat_max", [10**9, 1000], ids=["vectors", "quantized codes"])
def test_inverted_file_index_finds_the_near_copies_exact_search_finds(flat_max):
    x, planted = clustered(6000)
    exact_d, exact_i = knn(x, 5, exact_max=10**9)
    # forced onto the inverted file, of the vectors or of product-quantized codes
    ann_d, ann_i = knn(x, 5, exact_max=1000, flat_max=flat_max)
    copies = len(x) - 200 + planted
    assert (exact_i[planted, 0] == copies).all()
    assert (ann_i[planted, 0] == copies).all() and (ann_i[copies, 0] == planted).all()
    np.testing.assert_allclose(ann_d[planted, 0], exact_d[planted, 0], atol=1e-9)
    # approximate elsewhere (a hard case: 32-d Gaussian clusters), never nearer than the
    # truth, mostly equal, rarely more than 10% farther
    ratio = ann_d[:, 0] / exact_d[:, 0]
    assert (ratio >= 1 - 1e-9).all()
    assert np.mean(np.isclose(ratio, 1)) > 0.8 and np.quantile(ratio, 0.99) < 1.1


@pytest.mark.parametrize("flat_max", [10**9, 1000], ids=["vectors", "quantized codes"])
def test_queries_in_cell_order_find_what_queries_in_row_order_find(flat_max, monkeypatch):
    """The inverted file is searched with the queries ordered by cell (for the CPU's cache);
    each row still gets its own neighbours: the same as searching the rows in their order."""
    from qm_dagster import neighbours

    x, _ = clustered(3000)
    by_cell = knn(x, 4, exact_max=500, flat_max=flat_max)
    assert not np.array_equal(neighbours._by_cell(neighbours._ivf(x, "Flat"), x), np.arange(3000))
    monkeypatch.setattr(neighbours, "_by_cell", lambda index, x: np.arange(len(x)))
    by_row = knn(x, 4, exact_max=500, flat_max=flat_max)
    np.testing.assert_array_equal(by_cell[1], by_row[1])
    np.testing.assert_array_equal(by_cell[0], by_row[0])


def test_exact_copies_are_at_distance_zero():
    x, _ = clustered(300)
    x[5] = x[7]
    dist, idx = knn(x, 1)
    assert dist[5, 0] == 0.0 and idx[5, 0] == 7 and idx[7, 0] == 5


def test_hash_pairs_equal_an_all_pairs_popcount():
    rng = np.random.default_rng(3)
    base = rng.integers(-(2**63), 2**63 - 1, 400, dtype=np.int64)
    masks = np.zeros(400, np.uint64)
    for row, k in enumerate(rng.integers(0, 7, 400)):  # 0 to 6 bits flipped
        for bit in rng.choice(64, k, replace=False):
            masks[row] |= np.uint64(1) << np.uint64(bit)
    near = base ^ masks.view(np.int64)
    hashes = np.concatenate([base, near])
    bits = np.unpackbits(hashes.astype(">i8").view(np.uint8).reshape(-1, 8), axis=1)
    differing = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    for radius in (0, 2, 4):
        i, j = np.nonzero(np.triu(differing <= radius, k=1))
        expected = set(zip(i.tolist(), j.tolist(), strict=True))
        got = {tuple(p) for p in hash_pairs(hashes, radius).tolist()}
        assert got == expected, radius
    with pytest.raises(ValueError, match="at most 5 bits"):
        hash_pairs(hashes, 6)


def opencv_crop_hash(gray: np.ndarray, top: int, bottom: int, left: int, right: int) -> int:
    """One crop's hash the direct way: crop, area-resize to 32x32, DCT, 8x8 low signs."""
    crop = gray[top : THUMB - bottom, left : THUMB - right]
    small = cv2.resize(crop, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    low = cv2.dct(small)[:8, :8].ravel()
    return int(np.packbits(low > np.median(low[1:])).view(">u8")[0])


def test_crop_hashes_match_opencv_on_real_thumbnails():
    from tests.test_cache import photos

    grays = [
        cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (THUMB, THUMB), cv2.INTER_AREA)
        for p in photos(6)
    ]
    words = crop_hash_words(np.stack(grays))
    differing = []
    for n, gray in enumerate(grays):
        for p, (top, bottom) in enumerate((t, b) for t in CROP_MARGINS for b in CROP_MARGINS):
            for q, (left, right) in enumerate((a, c) for a in CROP_MARGINS for c in CROP_MARGINS):
                direct = opencv_crop_hash(gray, top, bottom, left, right)
                differing.append(int(np.bitwise_count(np.uint64(direct) ^ words[n, p * 16 + q])))
    differing = np.array(differing)
    # one coefficient at the median may fall either side of it (float32 in OpenCV)
    assert differing.max() <= 2 and np.mean(differing == 0) > 0.9


def test_crop_distance_is_small_for_a_cropped_copy_only():
    from tests.test_cache import photos

    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in photos(3)]
    h, w = images[0].shape
    cropped = images[0][int(h * 0.05) :, int(w * 0.04) : w - int(w * 0.03)]
    thumbs = np.stack(
        [cv2.resize(im, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for im in [*images, cropped]]
    )
    pairs = np.array([[0, 3], [1, 3], [1, 2]])
    words = crop_hash_words(thumbs)
    dist = crop_distances(pairs, lambda rows: words[rows], len(thumbs))
    assert dist[0] <= 4 and dist[1] > 10 and dist[2] > 10


@pytest.mark.parametrize("kept", [True, False])
def test_crop_distances_in_blocks_equal_every_pair_compared_directly(monkeypatch, kept):
    """Rows read in blocks (kept in memory or read twice) and pairs compared a few at a time
    give, for every pair, the fewest differing bits of either image's crops against the other's
    uncropped hash, as a direct comparison of the two rows finds it."""
    from qm_dagster import neighbours

    rng = np.random.default_rng(5)
    words = rng.integers(0, 2**63, size=(60, 256), dtype=np.int64).astype(np.uint64)
    words[7, 3] = words[40, 0]  # a crop of 7 equal to 40's uncropped hash
    words[12, 0] = words[13, 200] ^ np.uint64(0b101)  # 13's crop 2 bits from 12
    pairs = np.unique(np.sort(rng.integers(0, 60, size=(400, 2)), axis=1), axis=0)
    pairs = np.vstack([pairs[pairs[:, 0] != pairs[:, 1]], [[7, 40], [12, 13]]])
    monkeypatch.setattr(neighbours, "BLOCK", 16)
    monkeypatch.setattr(neighbours, "PAIR_BLOCK", 7)
    monkeypatch.setattr(neighbours, "CROP_CACHE_BYTES", 1 << 30 if kept else 0)
    asked = []
    dist = crop_distances(pairs, lambda rows: asked.append(len(rows)) or words[rows], 60)
    direct = [
        min(
            min(bin(int(c ^ words[j, 0])).count("1") for c in words[i]),
            min(bin(int(c ^ words[i, 0])).count("1") for c in words[j]),
        )
        for i, j in pairs
    ]
    assert dist.tolist() == direct
    assert dist[-2] == 0 and dist[-1] == 2
    assert max(asked) <= 16 and sum(asked) == len(np.unique(pairs)) * (1 if kept else 2)


def test_the_pass_stores_each_images_crop_hashes(tmp_path):
    """data/embeddings' ``crops`` column: per image, the crop hashes of its gray thumbnail, as
    ``crop_hash_words`` makes them for all images at once (the pass makes them a chunk at a
    time; a coefficient at the median may fall either side in float32)."""
    import pandas as pd

    from qm_dagster.embeddings import gray_thumb, thumbnail, words_array
    from qm_dagster.passes.image_pass import EMBEDDINGS, measure_images
    from tests.images import content_id
    from tests.test_cache import photos

    files = photos(7)
    manifest = pd.DataFrame(
        {
            "image_id": range(len(files)),
            "url": [str(p) for p in files],
            "content_hash": [content_id(p) for p in files],
            "bytes": [p.stat().st_size for p in files],
            "ok": True,
            "width": 640,
            "height": 480,
        }
    )
    result = measure_images(manifest, [], str(tmp_path), "v", chunk_size=3, embeddings=True)
    table = result.table(EMBEDDINGS).sort_values("image_id")
    stored = words_array(table.crops.tolist())
    grays = [gray_thumb(thumbnail(cv2.imread(str(p)))) for p in files]
    expected = crop_hash_words(np.stack(grays))
    differing = np.bitwise_count(stored ^ expected)
    assert differing.max() <= 2 and np.mean(differing == 0) > 0.99
