"""Benchmark: duplicates and uniqueness at a million images, on synthetic embeddings + hashes.

N unit vectors (141-d, the built-in embedding's size) around a few thousand centres, their
64-bit perceptual hashes random, and ``--planted`` near copies (vector noise ~0.01, 0-3 hash bits
flipped; a third found only by the hash: ~0.13 apart in embedding space). Prints, measured in this one run:

  (1) the near-copy pairs (embedding index + hash index) and uniqueness on all N: seconds, and
      how many planted copies were found (all must be);
  (2) on the first ``--baseline`` rows: ours vs scikit-learn's exact radius + k-NN search
      (what similarity.py used before) as a ratio, and whether the pairs agree.

Usage: python benchmarks/neighbours.py [--n 1000000] [--planted 3000] [--baseline 50000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qm_dagster.neighbours import hash_pairs, knn, unique_pairs  # noqa: E402
from qm_dagster.similarity import CANDIDATES, EMBEDDING_DISTANCE, PHASH_BITS  # noqa: E402

DIM = 141


def synthetic(n: int, planted: int, seed: int = 0):
    """Vectors, hashes and the planted (source, copy) rows; copies are the last rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(10, n // 300), DIM)).astype(np.float32)
    x = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):  # in blocks: bounded temporaries
        rows = min(100_000, n - start)
        block = centres[rng.integers(0, len(centres), rows)]
        x[start : start + rows] = block + 0.5 * rng.normal(size=(rows, DIM)).astype(np.float32)
    hashes = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    sources = rng.choice(n - planted, planted, replace=False)
    copies = np.arange(n - planted, n)
    by_hash = np.arange(planted) % 3 == 2  # only the hash says these are copies
    noise = np.where(by_hash, 0.15, 0.02)[:, None].astype(np.float32)  # ~0.13 and ~0.02 apart
    x[copies] = x[sources] + noise * rng.normal(size=(planted, DIM)).astype(np.float32)
    flips = np.zeros(planted, np.uint64)
    for row, k in enumerate(rng.integers(0, PHASH_BITS, planted)):
        for bit in rng.choice(64, k, replace=False):
            flips[row] |= np.uint64(1) << np.uint64(bit)
    hashes[copies] = hashes[sources] ^ flips.view(np.int64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, hashes, np.stack([sources, copies], axis=1)


def ours(x: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    dist, idx = knn(x, CANDIDATES)
    rows = np.repeat(np.arange(len(x)), idx.shape[1])
    close = dist.ravel() <= EMBEDDING_DISTANCE
    pairs = unique_pairs(
        [np.stack([rows, idx.ravel()], axis=1)[close], hash_pairs(hashes, PHASH_BITS)]
    )
    return pairs, dist[:, 0], time.perf_counter() - start


def sklearn_baseline(x: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, float]:
    from sklearn.neighbors import NearestNeighbors

    start = time.perf_counter()
    graph = NearestNeighbors(radius=EMBEDDING_DISTANCE).fit(x).radius_neighbors_graph(x)
    a, b = graph.nonzero()
    bits = np.unpackbits(hashes.astype(">i8").view(np.uint8).reshape(-1, 8), axis=1)
    nn = NearestNeighbors(radius=(PHASH_BITS + 0.5) / 64, metric="hamming").fit(bits)
    c, d = nn.radius_neighbors_graph(bits).nonzero()
    NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)  # uniqueness
    pairs = unique_pairs([np.stack([a, b], axis=1), np.stack([c, d], axis=1)])
    return pairs, time.perf_counter() - start


def found(pairs: np.ndarray, planted: np.ndarray) -> int:
    key = lambda p: np.sort(p, axis=1) @ np.array([1 << 32, 1])  # noqa: E731
    return int(np.isin(key(planted), key(pairs)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--planted", type=int, default=3000)
    parser.add_argument("--baseline", type=int, default=50_000)
    args = parser.parse_args()

    x, hashes, planted = synthetic(args.n, args.planted)
    pairs, _, seconds = ours(x, hashes)
    print(
        f"(1) {args.n:,} images: near pairs + uniqueness in {seconds:.1f} s; planted copies "
        f"found {found(pairs, planted)}/{len(planted)}; pairs {len(pairs):,}"
    )
    small, small_hashes, small_planted = synthetic(args.baseline, args.planted // 10, seed=1)
    mine, _, t_ours = ours(small, small_hashes)
    theirs, t_sklearn = sklearn_baseline(small, small_hashes)
    same = {tuple(p) for p in mine.tolist()} == {tuple(p) for p in theirs.tolist()}
    print(
        f"(2) {args.baseline:,} images: scikit-learn exact {t_sklearn:.1f} s / ours "
        f"{t_ours:.1f} s = {t_sklearn / t_ours:.1f}x; same pairs: {same}; planted found "
        f"{found(mine, small_planted)}/{len(small_planted)}"
    )


if __name__ == "__main__":
    main()
