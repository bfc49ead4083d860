"""Near neighbours at scale: k nearest embeddings (faiss: exact for small sets, an inverted file
of the vectors above, of quantized codes re-ranked exactly above that), 64-bit hashes within a
few bits (faiss multi-index hashing), and the crop-tolerant hash distance of candidate pairs
computed for all pairs at once.

None of these compares all pairs: the embedding index probes a few cells per query, the hash
index looks up exact matches of hash slices (two hashes within four bits agree exactly on one
of five slices), and crop hashes are matrix products over thumbnails, made once per image
content in the image pass and stored with its embedding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from threadpoolctl import threadpool_limits

from qm_dagster.embeddings import CROP_MARGINS, CROP_WORDS, THUMB

EXACT_MAX = 20_000  # vectors up to which search is exact (one BLAS product per block)
# Vectors up to which the inverted file holds the vectors themselves (a second copy): no codebook
# to train, k + 1 candidates re-ranked instead of RERANK, but every probed vector scanned in full.
# Measured (k = 10, 141-d): the 42k object embeddings of the generated 12k version 1.1 s against
# 2.6 s for quantized codes, same recall (0.95 of the exact 10 nearest); synthetic 50k 1.9 s vs
# 3.3 s, 100k 6.0 s vs 5.6 s, 200k 25.8 s vs 12.4 s: the crossover is near 100k.
IVF_FLAT_MAX = 100_000
NPROBE = 16  # inverted-file cells visited per query above EXACT_MAX
RERANK = 64  # candidates the quantized index proposes per query (at least), re-ranked exactly
BLOCK = 4096  # queries (or thumbnails) per block: bounds the memory of one step
PAIR_BLOCK = 1024  # candidate pairs whose crop hashes are compared at once (2 MB of words)
CROP_CACHE_BYTES = 64 << 20  # crop hashes read once and kept up to this size (32k images)


def _faiss():
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return faiss


def knn(
    x: np.ndarray, k: int, exact_max: int = EXACT_MAX, flat_max: int = IVF_FLAT_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each row of ``x``: (euclidean distances, row indices),
    both ``n x min(k, n - 1)``, nearest first; distances computed directly from the vectors (0
    for exact copies, float32 arithmetic), an index of -1 (at distance inf) where fewer were
    found. Search is exact up to ``exact_max`` rows; above, an inverted file (~2 sqrt(n) cells,
    ``NPROBE`` visited) of the vectors themselves up to ``flat_max`` rows, and of
    product-quantized codes (faiss ``IVF,PQ fast-scan``) beyond, which proposes ``RERANK``
    candidates or more that are re-ranked exactly."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0)), np.zeros((n, 0), np.int64)
    quantized = n > max(exact_max, flat_max)
    index = _flat(x) if n <= exact_max else _ivf(x, "Flat" if not quantized else None)
    wanted = max(RERANK, 4 * (k + 1)) if quantized else k + 1
    order = _by_cell(index, x) if n > exact_max else np.arange(n)
    dist = np.empty((n, k), np.float64)
    idx = np.empty((n, k), np.int64)
    for start in range(0, n, BLOCK):
        rows = order[start : start + BLOCK]
        query = x[rows]
        _, found = index.search(_padded(query), min(wanted, n))
        found = _drop_self(found, rows)
        # distances again, directly: the index's are quantized, or |x|^2 + |y|^2 - 2xy (~1e-4
        # off on exact copies). Float32 differences squared and summed in one einsum pass: 0 on
        # exact copies, within 2e-7 (relative) of float64 differences and a norm, and half
        # their time (0.07 s instead of 0.14 s for 4,096 queries x 64 candidates, 141-d)
        diff = x[found] - query[:, None, :]
        exact = np.sqrt(np.einsum("qcd,qcd->qc", diff, diff).astype(np.float64))
        exact[found < 0] = np.inf  # fewer found than asked (an almost empty cell)
        nearest = np.argsort(exact, axis=1, kind="stable")[:, :k]
        dist[rows] = np.take_along_axis(exact, nearest, axis=1)
        idx[rows] = np.take_along_axis(found, nearest, axis=1)
    idx[~np.isfinite(dist)] = -1
    return dist, idx


def _by_cell(index, x: np.ndarray) -> np.ndarray:
    """The rows in the order of the inverted file's cell each falls in. Queries searched in that
    order probe mostly the same cells one after the other, so their lists stay in the CPU's
    cache: the same results, 0.98 -> 0.74 s for the 42k object embeddings of the generated 12k
    version (the search reads every probed vector; in row order, from memory each time)."""
    quantizer = _faiss().extract_index_ivf(index).quantizer
    cells = [
        quantizer.search(_padded(x[s : s + 65_536]), 1)[1][:, 0] for s in range(0, len(x), 65_536)
    ]
    return np.argsort(np.concatenate(cells), kind="stable")


def _flat(x: np.ndarray):
    index = _faiss().IndexFlatL2(_padded(x[:1]).shape[1])
    index.add(_padded(x))
    return index


def _ivf(x: np.ndarray, codes: str | None = None):
    """Inverted file (~2 sqrt(n) cells) of ``codes`` (a faiss factory string: ``Flat``, the
    vectors) or by default of 4-bit product-quantized codes, 2 dimensions a code: fast to scan
    (SIMD), approximate; the caller re-ranks exactly."""
    faiss = _faiss()
    padded = _padded(x)
    n, d = padded.shape
    cells = int(min(2 * np.sqrt(n), n // 39))
    index = faiss.index_factory(d, f"IVF{cells},{codes or f'PQ{d // 2}x4fs'}")
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10  # cells only route queries: a rough k-means is enough
    sample = np.random.default_rng(0).choice(n, min(n, 40 * cells), replace=False)
    index.train(padded[np.sort(sample)])
    for start in range(0, n, 65_536):
        index.add(padded[start : start + 65_536])
    ivf.nprobe = NPROBE
    return index


def _padded(x: np.ndarray) -> np.ndarray:
    """``x`` with a zero column when its width is odd (codes take 2 dimensions each)."""
    if x.shape[1] % 2 == 0:
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(np.pad(x, ((0, 0), (0, 1))))


def _drop_self(found: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each query's k + 1 results less its own row (it may tie with an exact copy and not come
    first); where it is absent, less the farthest."""
    own = found == rows[:, None]
    own[~own.any(axis=1), -1] = True
    own &= np.cumsum(own, axis=1) == 1  # one per row
    return found[~own].reshape(len(found), -1)


def hash_pairs(hashes: np.ndarray, bits: int) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of 64-bit hashes differing in at most ``bits`` (<= 5) bits,
    as an ``m x 2`` array. Multi-index hashing through faiss: ``bits + 1`` disjoint slices of the
    hash, each a hash table; two hashes within ``bits`` agree exactly on one slice at least, so
    exact lookups of each slice find every pair (then checked on all 64 bits)."""
    if bits > 5:
        raise ValueError("hash_pairs finds hashes within at most 5 bits")
    faiss = _faiss()
    codes = np.ascontiguousarray(hashes.astype(">i8").view(np.uint8).reshape(-1, 8))
    index = faiss.IndexBinaryMultiHash(64, bits + 1, 64 // (bits + 1))
    index.nflip = 0
    index.add(codes)
    out = []
    for start in range(0, len(codes), BLOCK):
        lims, _, found = index.range_search(codes[start : start + BLOCK], bits + 1)
        query = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = query < found
        out.append(np.stack([query[keep], found[keep]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    within = _popcount(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= bits
    return pairs[within]


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64))


@cache
def _crop_operators() -> tuple[np.ndarray, np.ndarray]:
    """Row operators (16 x 8 x 64) and the index order: each is "keep rows top..64-bottom, area
    resize to 32, 8 lowest DCT rows" for one (top, bottom) of CROP_MARGINS; the same serves
    columns. Area resize and DCT are linear, so a crop's 8x8 low DCT is ``R @ T @ C.T``."""
    from scipy.fft import dct

    low = dct(np.eye(32), norm="ortho", axis=0)[:8]  # 8 x 32
    ops, order = [], []
    for top in CROP_MARGINS:
        for bottom in CROP_MARGINS:
            size = THUMB - top - bottom
            resize = np.zeros((32, THUMB))
            resize[:, top : THUMB - bottom] = _area_matrix(size, 32)
            ops.append(low @ resize)
            order.append((top, bottom))
    return np.array(ops), np.array(order)


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """``dst x src`` weights of an area (box-filter) downscale, as OpenCV's INTER_AREA."""
    scale = src / dst
    edges = np.arange(src + 1)
    lo = np.arange(dst)[:, None] * scale
    overlap = np.minimum(edges[1:], lo + scale) - np.maximum(edges[:-1], lo)
    return np.clip(overlap, 0, None) / scale


def crop_hash_words(thumbs: np.ndarray, threads: int = 0) -> np.ndarray:
    """Per thumbnail (``n x 64 x 64`` uint8): the 64-bit hash of the image cropped by every
    combination of CROP_MARGINS per side (``n x 256`` uint64; column 0 uncropped), each the signs of its 8x8 low DCT against their median (DC
    excluded from the median). In float32, as OpenCV's DCT: 2.6x faster than float64 (4,096
    thumbnails 1.1 s instead of 2.9 s); a coefficient at the median may fall either side.
    ``threads``: row crops at once (0 = a thread per core; the pass's workers use 1)."""
    ops = _crop_operators()[0].astype(np.float32)
    p, n = len(ops), len(thumbs)
    flat = ops.reshape(p * 8, THUMB)  # every row operator stacked, so each stage is one GEMM
    # transposed as bytes, then widened: 20 ms for 4,096 thumbnails, 290 ms the other way round
    columns = np.ascontiguousarray(thumbs.transpose(1, 0, 2)).reshape(THUMB, n * THUMB)
    columns = columns.astype(np.float32)
    half = (flat @ columns).reshape(p, 8, n, THUMB)  # row crops: p x 8 x n x 64
    out = np.empty((n, p, p), np.uint64)

    def row_crop(a: int) -> None:  # temporaries of n x p x 64, not n x p^2 x 64
        rows = np.ascontiguousarray(half[a].transpose(1, 0, 2)).reshape(n * 8, THUMB)
        coef = (rows @ flat.T).reshape(n, 8, p, 8).transpose(0, 2, 1, 3).reshape(n, p, 64)
        # 63 values without the DC: the median is the 32nd smallest
        median = np.partition(coef[:, :, 1:], 31, axis=2)[:, :, 31:32]
        out[:, a, :] = np.packbits(coef > median, axis=2).view(">u8")[..., 0]

    # The row crops in one thread per core, BLAS single-threaded in each: most of a row crop's
    # time is copies, partition and bit packing, which numpy runs without the GIL (4,096
    # thumbnails: 0.37 s instead of 0.54 s with threaded BLAS one row crop at a time, 2 cores)
    workers = threads or os.cpu_count() or 1
    if workers == 1:  # a pass worker: its process already has single-threaded BLAS
        for a in range(p):
            row_crop(a)
        return out.reshape(n, p * p)
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        list(pool.map(row_crop, range(p)))
    return out.reshape(n, p * p)


def crop_distances(
    pairs: np.ndarray, words: Callable[[np.ndarray], np.ndarray], n: int
) -> np.ndarray:
    """Crop-tolerant hash distance of each pair ``(i, j)`` of rows ``< n``: the fewest
    differing bits between one image's hash and the other's cropped by up to 9% per side, both
    ways. ``words(rows)`` returns those rows' ``len(rows) x 256`` crop hashes (column 0
    uncropped: ``crop_hash_words``), read a block of rows at a time: the uncropped hashes of
    every row first (8 bytes a row), then each block's crops against them. Blocks are read
    once when all the rows' crops fit in ``CROP_CACHE_BYTES``, else twice."""
    best = np.full(len(pairs), 64, np.int64)
    if not len(pairs):
        return best
    rows = np.unique(pairs)
    where = np.full(n, -1, np.int64)
    where[rows] = np.arange(len(rows))
    blocks = [rows[s : s + BLOCK] for s in range(0, len(rows), BLOCK)]
    kept = len(rows) * CROP_WORDS * 8 <= CROP_CACHE_BYTES
    read = [words(b) for b in blocks] if kept else None
    uncropped = np.concatenate(
        [(read[i] if kept else words(b))[:, 0] for i, b in enumerate(blocks)]
    )
    start = 0
    for i, block in enumerate(blocks):
        cropped = read[i] if kept else words(block)
        for side in (0, 1):  # this side's crops against the other side's uncropped hash
            pos = where[pairs[:, side]] - start
            inside = np.flatnonzero((pos >= 0) & (pos < len(block)))
            other = uncropped[where[pairs[inside, 1 - side]]]
            # PAIR_BLOCK pairs at a time: temporaries of 2 MB stay in cache and are reused,
            # instead of ~100 MB page-faulted fresh (all of this 0.24 -> 0.12 s at 10k images)
            for s in range(0, len(inside), PAIR_BLOCK):
                sel = inside[s : s + PAIR_BLOCK]
                dist = np.bitwise_count(cropped[pos[sel]] ^ other[s : s + PAIR_BLOCK, None])
                best[sel] = np.minimum(best[sel], dist.min(axis=1))
        start += len(block)
    return best


def unique_pairs(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The distinct ``(i, j)`` rows, ``i < j``, of several ``m x 2`` pair arrays."""
    joined = np.concatenate([p.reshape(-1, 2) for p in parts]) if parts else np.zeros((0, 2))
    joined = np.sort(joined.astype(np.int64), axis=1)
    joined = joined[joined[:, 0] != joined[:, 1]]
    return np.unique(joined, axis=0) if len(joined) else joined.reshape(0, 2)
