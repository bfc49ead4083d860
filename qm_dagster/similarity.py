"""Uniqueness and duplicate groups from embeddings and perceptual hashes.

Neighbours come from :mod:`qm_dagster.neighbours` (faiss indexes, no all-pairs comparison);
groups are the connected components of the "is a near copy of" graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from qm_dagster import storage
from qm_dagster.embeddings import CROP_WORDS, words_array
from qm_dagster.neighbours import crop_distances, hash_pairs, knn, unique_pairs

# Thresholds measured on the 249 distinct real photos of ../shared/data and planted copies of
# them (JPEG quality 50, half size, crops of 3-8%): copies are within 0.03 in embedding distance
# and 2 phash bits when re-encoded or resized, and within 4 crop-tolerant bits when cropped.
PHASH_BITS = 4
EMBEDDING_DISTANCE = 0.05
CROP_BITS = 4
CANDIDATES = 5  # nearest neighbours in embedding space checked with the crop-tolerant hash
GROUP_COLUMNS = ["group", "kind", "version", "image_id", "file_name", "content_hash"]


@dataclass
class EmbeddingSet:
    """The embeddings of one or more versions, as neighbour search needs them: ids, vectors and
    hashes in memory (~600 bytes an image); the crop hashes (2 KB an image, 2 GB at a million)
    stay in their Parquet files and are read a block of rows at a time, only for the rows the
    crop check asks for."""

    version: np.ndarray
    image_id: np.ndarray
    vectors: np.ndarray
    phash: np.ndarray
    _files: list[tuple[str, int, np.ndarray]] = field(default_factory=list)  # url, start, groups
    _crops: np.ndarray | None = None  # in memory instead (from_frame)

    @classmethod
    def read(cls, sources: Sequence[tuple[str, str]]) -> EmbeddingSet:
        """``(version, url)`` of each data/embeddings file, read without the crop hashes."""
        import pyarrow.parquet as pq

        parts, files, start = [], [], 0
        for version, url in sources:
            fs, path = storage.filesystem(url)
            with fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
                table = pf.read(columns=["image_id", "phash", "vector"])
            files.append((url, start, np.cumsum([0, *sizes])))
            start += table.num_rows
            parts.append((version, table))
        return cls(*_columns(parts), _files=files)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> EmbeddingSet:
        """From an in-memory table with ``version, image_id, phash, vector`` (and ``crops``)."""
        x = np.stack(frame.vector.to_numpy()).astype(np.float32) if len(frame) else None
        crops = _words(frame.crops) if "crops" in frame and len(frame) else None
        return cls(
            frame.version.to_numpy(object),
            frame.image_id.to_numpy(),
            x if x is not None else np.zeros((0, 0), np.float32),
            frame.phash.to_numpy().astype(np.int64),
            _crops=crops,
        )

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def has_crops(self) -> bool:
        return self._crops is not None or bool(self._files)

    def crops(self, rows: np.ndarray) -> np.ndarray:
        """The ``len(rows) x CROP_WORDS`` crop hashes of ``rows``, reading only their row
        groups."""
        if self._crops is not None:
            return self._crops[rows]
        out = np.empty((len(rows), CROP_WORDS), np.uint64)
        for url, start, groups in self._files:
            local = rows - start
            inside = np.flatnonzero((local >= 0) & (local < groups[-1]))
            if inside.size:
                out[inside] = _read_crops(url, groups, local[inside])
        return out


def _columns(parts: list[tuple[str, pa.Table]]):
    """version, image_id, vectors and phash of the concatenated tables."""
    tables = [t for _, t in parts]
    n = sum(t.num_rows for t in tables)
    version = np.concatenate([np.full(t.num_rows, v, dtype=object) for v, t in parts] or [[]])
    if not n:
        empty = np.zeros(0)
        return version, empty, np.zeros((0, 0), np.float32), empty.astype(np.int64)
    image_id = np.concatenate([t.column("image_id").to_numpy() for t in tables])
    phash = np.concatenate([t.column("phash").to_numpy() for t in tables]).astype(np.int64)
    vectors = list_vectors(pa.chunked_array([c for t in tables for c in t.column("vector").chunks]))
    return version, image_id, vectors, phash


def list_vectors(column: pa.ChunkedArray) -> np.ndarray:
    """A column of equal-length float lists as one ``n x d`` float32 array, without Python
    objects per row."""
    n = len(column)
    if not n:
        return np.zeros((0, 0), np.float32)
    flat = pc.list_flatten(column).to_numpy()  # respects slices' offsets, unlike ``.values``
    return flat.astype(np.float32, copy=False).reshape(n, -1)


def _read_crops(url: str, groups: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Crop hashes of rows ``local`` of one file whose row groups start at ``groups``."""
    import pyarrow.parquet as pq

    out = np.empty((len(local), CROP_WORDS), np.uint64)
    group_of = np.searchsorted(groups, local, side="right") - 1
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        for g in np.unique(group_of):
            mine = np.flatnonzero(group_of == g)
            column = pf.read_row_group(int(g), columns=["crops"]).column("crops")
            picked = column.take(pa.array(local[mine] - groups[g]))
            out[mine] = words_array(picked.to_pylist())
    return out


def vectors(embeddings: pd.DataFrame) -> np.ndarray:
    if embeddings.empty:
        return np.zeros((0, 0), np.float32)
    return np.stack(embeddings.vector.to_numpy()).astype(np.float32)


def uniqueness(embeddings: pd.DataFrame | EmbeddingSet) -> np.ndarray:
    """Euclidean distance from each image's embedding to its nearest other image (0 = exact copy)."""
    x = embeddings.vectors if isinstance(embeddings, EmbeddingSet) else vectors(embeddings)
    if len(x) < 2:
        return np.full(len(x), np.nan)
    distances, _ = knn(x, 1)
    return np.where(np.isfinite(distances[:, 0]), distances[:, 0], np.nan)


def _near_pairs(
    x: np.ndarray,
    hashes: np.ndarray,
    crops,
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
    if crops is None:
        return found
    rest = unique_pairs([candidates[~close & (neighbours.ravel() >= 0)]])
    rest = rest[~_member(rest, found)]
    cropped = crop_distances(rest, crops, len(x)) <= crop_bits
    return unique_pairs([found, rest[cropped]])


def _member(pairs: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Which rows of ``pairs`` are rows of ``of`` (both ``i < j``)."""
    key = lambda p: p[:, 0].astype(np.int64) << 32 | p[:, 1]  # noqa: E731
    return np.isin(key(pairs), key(of))


def _words(column: pd.Series) -> np.ndarray | None:
    """The crop hashes as one ``n x CROP_WORDS`` array (None when any is missing)."""
    return None if column.isna().any() else words_array(column.tolist())


def _same_content_pairs(content: pd.Series) -> np.ndarray:
    """Each row with a content hash seen before, paired with the first row of that hash."""
    codes = pd.factorize(content)[0]
    first = pd.Series(np.arange(len(codes))).groupby(codes).transform("first").to_numpy()
    has = (codes >= 0) & (first != np.arange(len(codes)))
    return np.stack([first[has], np.flatnonzero(has)], axis=1)


def duplicate_groups(
    images: pd.DataFrame,
    embeddings: pd.DataFrame | EmbeddingSet,
    radius: float = EMBEDDING_DISTANCE,
    bits: int = PHASH_BITS,
    crop_bits: int = CROP_BITS,
) -> pd.DataFrame:
    """Groups of exact (same content hash) and near copies among ``images``.

    ``images`` has ``version, image_id, file_name, content_hash`` (rows of several versions may
    be mixed, e.g. a version and its reference); ``embeddings`` is an ``EmbeddingSet`` (or a
    table with ``version, image_id, phash, vector, crops``). Near copies: embedding distance <= ``radius``, perceptual hashes within
    ``bits``, or, among each image's nearest neighbours, a crop-tolerant hash distance within
    ``crop_bits``. A group is ``exact`` when all its members share one content hash, else
    ``near``.
    """
    emb = (
        embeddings if isinstance(embeddings, EmbeddingSet) else EmbeddingSet.from_frame(embeddings)
    )
    rows = pd.DataFrame(
        {"version": emb.version, "image_id": emb.image_id, "row": np.arange(len(emb))}
    )
    table = images.merge(rows, on=["version", "image_id"], how="left")
    table = table[table.row.notna() | table.content_hash.notna()].reset_index(drop=True)
    n = len(table)
    pairs = [_same_content_pairs(table.content_hash)]
    has_vec = np.flatnonzero(table.row.notna().to_numpy())
    if len(has_vec):
        at = table.row.to_numpy()[has_vec].astype(np.int64)
        crops = (lambda r: emb.crops(at[r])) if emb.has_crops else None
        near = _near_pairs(emb.vectors[at], emb.phash[at], crops, radius, bits, crop_bits)
        pairs.append(has_vec[near])
    pairs = unique_pairs(pairs)
    if not len(pairs):
        return pd.DataFrame(columns=GROUP_COLUMNS)
    from scipy.sparse import coo_matrix  # lazy: 0.26 s that loading the definitions need not pay
    from scipy.sparse.csgraph import connected_components

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
