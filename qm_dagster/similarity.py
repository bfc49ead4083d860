"""Uniqueness and duplicate groups from embeddings and perceptual hashes.

Neighbours come from :mod:`qm_dagster.neighbours` (faiss indexes, no all-pairs comparison);
groups are the connected components of the "is a near copy of" graph.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from qm_dagster.embeddings import THUMB
from qm_dagster.neighbours import crop_distances, hash_pairs, knn, unique_pairs

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
    distances, _ = knn(x, 1)
    return np.where(np.isfinite(distances[:, 0]), distances[:, 0], np.nan)


def _near_pairs(
    x: np.ndarray,
    hashes: np.ndarray,
    thumbs: np.ndarray | None,
    radius: float,
    bits: int,
    crop_bits: int,
) -> np.ndarray:
    """Pairs of near copies: embeddings within ``radius`` (among each image's nearest), hashes
    within ``bits``, or nearest neighbours whose crop-tolerant hash distance is within
    ``crop_bits``."""
    if len(x) < 2:
        return np.zeros((0, 2), np.int64)
    distances, neighbours = knn(x, CANDIDATES)
    rows = np.repeat(np.arange(len(x)), neighbours.shape[1])
    candidates = np.stack([rows, neighbours.ravel()], axis=1)
    close = distances.ravel() <= radius
    found = unique_pairs([candidates[close], hash_pairs(hashes, bits)])
    if thumbs is None:
        return found
    rest = unique_pairs([candidates[~close & (neighbours.ravel() >= 0)]])
    rest = rest[~_member(rest, found)]
    cropped = crop_distances(rest, lambda r: thumbs[r], len(x)) <= crop_bits
    return unique_pairs([found, rest[cropped]])


def _member(pairs: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Which rows of ``pairs`` are rows of ``of`` (both ``i < j``)."""
    key = lambda p: p[:, 0].astype(np.int64) << 32 | p[:, 1]  # noqa: E731
    return np.isin(key(pairs), key(of))


def _thumbs(column: pd.Series) -> np.ndarray | None:
    """The gray thumbnails as one ``n x 64 x 64`` array (None when any is missing)."""
    if column.isna().any():
        return None
    raw = b"".join(column.tolist())
    return np.frombuffer(raw, np.uint8).reshape(len(column), THUMB, THUMB)


def _same_content_pairs(content: pd.Series) -> np.ndarray:
    """Each row with a content hash seen before, paired with the first row of that hash."""
    codes = pd.factorize(content)[0]
    first = pd.Series(np.arange(len(codes))).groupby(codes).transform("first").to_numpy()
    has = (codes >= 0) & (first != np.arange(len(codes)))
    return np.stack([first[has], np.flatnonzero(has)], axis=1)


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
    pairs = [_same_content_pairs(table.content_hash)]
    has_vec = np.flatnonzero(table.vector.notna().to_numpy())
    if len(has_vec):
        x = vectors(table.iloc[has_vec])
        hashes = table.phash.to_numpy()[has_vec].astype(np.int64)
        thumbs = _thumbs(table.thumb.iloc[has_vec]) if "thumb" in table else None
        near = _near_pairs(x, hashes, thumbs, radius, bits, crop_bits)
        pairs.append(has_vec[near])
    pairs = unique_pairs(pairs)
    if not len(pairs):
        return pd.DataFrame(columns=GROUP_COLUMNS)
    a, b = pairs.T
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
