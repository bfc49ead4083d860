"""Uniqueness and duplicate groups from embeddings and perceptual hashes.

Neighbour search is scikit-learn's (a tree or brute-force in blocks, never an all-pairs matrix
held in memory); groups are the connected components of the "is a near copy of" graph.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

from qm_dagster.embeddings import crop_hashes, crop_tolerant_distance

# Thresholds measured on the 249 distinct real photos of ../shared/data and planted copies of
# them (JPEG quality 50, half size, crops of 3-8%): copies are within 0.03 in embedding distance
# and 2 phash bits when re-encoded or resized, and within 4 crop-tolerant bits when cropped.
PHASH_BITS = 4
EMBEDDING_DISTANCE = 0.05
CROP_BITS = 4
CANDIDATES = 5  # nearest neighbours in embedding space checked with the crop-tolerant hash
GROUP_COLUMNS = ["group", "kind", "version", "image_id", "file_name", "content_hash"]


def vectors(embeddings: pd.DataFrame) -> np.ndarray:
    if embeddings.empty:
        return np.zeros((0, 0), np.float32)
    return np.stack(embeddings.vector.to_numpy()).astype(np.float32)


def uniqueness(embeddings: pd.DataFrame) -> np.ndarray:
    """Euclidean distance from each image's embedding to its nearest other image (0 = exact copy)."""
    x = vectors(embeddings)
    if len(x) < 2:
        return np.full(len(x), np.nan)
    distances, _ = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    return distances[:, 1]


def _near_pairs(
    x: np.ndarray,
    hashes: np.ndarray,
    thumbs: list[bytes],
    radius: float,
    bits: int,
    crop_bits: int,
) -> list[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    if len(x) < 2:
        return []
    graph = NearestNeighbors(radius=radius).fit(x).radius_neighbors_graph(x, mode="connectivity")
    rows, cols = graph.nonzero()
    pairs |= {(int(a), int(b)) for a, b in zip(rows, cols, strict=True) if a < b}
    hash_bits = np.unpackbits(hashes.astype(">i8").view(np.uint8).reshape(-1, 8), axis=1)
    nn = NearestNeighbors(radius=(bits + 0.5) / 64, metric="hamming").fit(hash_bits)
    rows, cols = nn.radius_neighbors_graph(hash_bits, mode="connectivity").nonzero()
    pairs |= {(int(a), int(b)) for a, b in zip(rows, cols, strict=True) if a < b}
    _, neighbours = NearestNeighbors(n_neighbors=min(CANDIDATES + 1, len(x))).fit(x).kneighbors(x)
    crops: dict[int, np.ndarray] = {}
    for i, row in enumerate(neighbours):
        for j in (int(j) for j in row if j != i):
            pair = (min(i, j), max(i, j))
            if pair not in pairs and _crop_distance(crops, thumbs, i, j) <= crop_bits:
                pairs.add(pair)
    return sorted(pairs)


def _crop_distance(cache: dict[int, np.ndarray], thumbs: list[bytes], i: int, j: int) -> int:
    for k in (i, j):
        if k not in cache:
            cache[k] = crop_hashes(thumbs[k])
    return crop_tolerant_distance(cache[i], cache[j])


def duplicate_groups(
    images: pd.DataFrame,
    embeddings: pd.DataFrame,
    radius: float = EMBEDDING_DISTANCE,
    bits: int = PHASH_BITS,
    crop_bits: int = CROP_BITS,
) -> pd.DataFrame:
    """Groups of exact (same content hash) and near copies among ``images``.

    ``images`` has ``version, image_id, file_name, content_hash`` (rows of several versions may
    be mixed, e.g. a version and its reference); ``embeddings`` has ``version, image_id, phash,
    vector, thumb``. Near copies: embedding distance <= ``radius``, perceptual hashes within
    ``bits``, or, among each image's nearest neighbours, a crop-tolerant hash distance within
    ``crop_bits``. A group is ``exact`` when all its members share one content hash, else
    ``near``.
    """
    table = images.merge(embeddings, on=["version", "image_id"], how="left")
    table = table[table.vector.notna() | table.content_hash.notna()].reset_index(drop=True)
    n = len(table)
    pairs: list[tuple[int, int]] = []
    for _, rows in table.groupby("content_hash").indices.items():
        pairs += [(int(rows[0]), int(r)) for r in rows[1:]]
    has_vec = np.flatnonzero(table.vector.notna().to_numpy())
    if len(has_vec):
        x = vectors(table.iloc[has_vec])
        hashes = table.phash.to_numpy()[has_vec].astype(np.int64)
        thumbs = table.thumb.to_numpy()[has_vec].tolist()
        near = _near_pairs(x, hashes, thumbs, radius, bits, crop_bits)
        pairs += [(int(has_vec[a]), int(has_vec[b])) for a, b in near]
    if not pairs:
        return pd.DataFrame(columns=GROUP_COLUMNS)
    a, b = np.array(pairs).T
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    table = table.assign(group=labels)
    sizes = table.group.value_counts()
    grouped = table[table.group.map(sizes) > 1]
    kinds = (
        grouped.groupby("group").content_hash.nunique().map(lambda k: "exact" if k == 1 else "near")
    )
    grouped = grouped.assign(kind=grouped.group.map(kinds))
    order = {g: i for i, g in enumerate(sorted(grouped.group.unique()))}
    grouped = grouped.assign(group=grouped.group.map(order))
    return (
        grouped[GROUP_COLUMNS].sort_values(["group", "version", "image_id"]).reset_index(drop=True)
    )
