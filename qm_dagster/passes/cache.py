"""Pass values keyed by content: write-once Parquet parts under ``<storage>/_cache/v1``.

A value is found by (key, fingerprint). The key of an image is its content id (the manifest's
``content_hash``: a digest of its bytes, or of the object store's ETag and size); the key of an
object adds its geometry, class and crowd flag. A fingerprint names what was computed and with
which code: ``data/brightness@2.1`` (asset key @ engine.metric code version), with the settings a
value depends on after ``#`` (the embedding provider). Changing one metric's code changes only
its fingerprint, so only it is recomputed.

Layout, one folder per kind of row::

    _cache/v1/image/<part>.parquet    key, status, errors, one column per fingerprint
    _cache/v1/object/<part>.parquet   key, errors, one column per fingerprint
    _cache/v1/crops/<part>.parquet    key, crop hashes (2 KB; kept apart from the vectors)

Every part is written once, by the worker that computed it, under a fresh random name, and never
rewritten: two passes sharing images may run at once, a killed pass leaves only whole parts, and
its rerun finds them. A key may sit in several parts (computed twice by concurrent passes); any
copy is equal, the index takes the newest listed.
"""

from __future__ import annotations

import binascii
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qm_dagster import storage

CACHE_DIR = "_cache/v1"
KINDS = ("image", "object", "crops")
KEY, STATUS, ERRORS = "key", "status", "errors"
RESERVED = (KEY, STATUS, ERRORS)


def fingerprint(asset_key: str, code_version: str, settings: str = "") -> str:
    """The column name of one computed quantity: ``asset@code[#settings]``."""
    return f"{asset_key}@{code_version}" + (f"#{settings}" if settings else "")


def cache_url(storage_url: str, kind: str) -> str:
    return storage.join(storage_url, CACHE_DIR, kind)


def new_part_url(storage_url: str, kind: str) -> str:
    """A fresh, never reused part name: concurrent writers cannot collide."""
    return storage.join(cache_url(storage_url, kind), f"{uuid.uuid4().hex}.parquet")


def write_part(url: str, columns: dict[str, pa.Array | list]) -> None:
    """Write one part atomically (one PUT on object stores, rename locally)."""
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(url, sink.getvalue().to_pybytes())


_HEX = np.frombuffer(bytes.fromhex("").join(f"{i:02x}".encode() for i in range(256)), np.uint8)
_HEX = _HEX.reshape(256, 2)


def object_keys(content: pd.Series, objects: pd.DataFrame) -> np.ndarray:
    """128-bit keys (32 hex characters) of objects: image content + geometry + class + crowd.

    Vectorised (two differently keyed pandas hashes of the same columns), no Python per row.
    """
    frame = pd.DataFrame(
        {
            "content": content.to_numpy(),
            "x": objects.bbox_x.to_numpy(),
            "y": objects.bbox_y.to_numpy(),
            "w": objects.bbox_w.to_numpy(),
            "h": objects.bbox_h.to_numpy(),
            "seg": objects.segmentation.fillna("").to_numpy(),
            "cat": objects.category_id.to_numpy(),
            "crowd": objects.iscrowd.to_numpy(),
        }
    )
    lo = pd.util.hash_pandas_object(frame, index=False, hash_key="qm-object-key-lo").to_numpy()
    hi = pd.util.hash_pandas_object(frame, index=False, hash_key="qm-object-key-hi").to_numpy()
    raw = np.stack([hi.astype(">u8"), lo.astype(">u8")], axis=1).view(np.uint8)
    return np.ascontiguousarray(_HEX[raw].reshape(len(frame), 32)).view("S32").ravel()


@dataclass
class Located:
    """Where each requested key's value is: part number and row in it, -1 where absent."""

    part: np.ndarray
    row: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return self.part >= 0

    def subset(self, mask: np.ndarray) -> Located:
        return Located(self.part[mask], self.row[mask])


def key_words(keys: np.ndarray) -> np.ndarray:
    """32-hex-character keys as ``n x 2`` unsigned 64-bit words (16 bytes a key, C speed)."""
    keys = np.ascontiguousarray(keys, dtype="S32")
    if not len(keys):
        return np.zeros((0, 2), dtype=np.uint64)
    raw = binascii.unhexlify(keys.tobytes())
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)


@dataclass
class _Lookup:
    """Where the keys of a set of parts are: keys sorted by their low word (binary search), the
    high word to confirm a hit (a low-word collision is a miss, never a wrong value). 24 bytes
    a key, no hash table."""

    low: np.ndarray
    high: np.ndarray
    part: np.ndarray
    row: np.ndarray

    def find(self, words: np.ndarray) -> np.ndarray:
        """Position of each key (``n x 2`` words) in this lookup, -1 where absent."""
        pos = np.searchsorted(self.low, words[:, 1])
        pos = np.minimum(pos, max(len(self.low) - 1, 0))
        hit = np.zeros(len(words), dtype=bool)
        if len(self.low):
            hit = (self.low[pos] == words[:, 1]) & (self.high[pos] == words[:, 0])
        return np.where(hit, pos, -1)


@dataclass
class CacheIndex:
    """Which keys each part holds, and which fingerprints it has, for one kind of row.

    Holds the cache's keys (16 bytes each, plus one hash index per distinct set of parts, shared
    by every fingerprint those parts hold), never values: the values are read from the parts
    when a version's tables are assembled.
    """

    url: str
    parts: list[str] = field(default_factory=list)
    columns: list[frozenset[str]] = field(default_factory=list)
    failed: dict[bytes, str] = field(default_factory=dict)  # image keys OpenCV cannot decode
    _words: list[np.ndarray] = field(default_factory=list)
    _lookups: dict[tuple[int, ...], _Lookup] = field(default_factory=dict)
    _sealed: bool = False

    @classmethod
    def load(cls, storage_url: str, kind: str, threads: int = 16) -> CacheIndex:
        """Read the key column and schema of every part (parts written later are added with
        ``add``)."""
        index = cls.empty(storage_url, kind)
        fs, path = storage.filesystem(index.url)
        fs.invalidate_cache(path)
        try:
            names = sorted(
                e for e in fs.ls(path, detail=False) if not e.rsplit("/", 1)[-1].startswith(".")
            )
        except FileNotFoundError:
            return index
        urls = [storage.join(index.url, n.rsplit("/", 1)[-1]) for n in names]
        with ThreadPoolExecutor(threads) as pool:
            for url, (cols, keys, failed) in zip(urls, pool.map(_read_keys, urls), strict=True):
                index.add(url, cols, keys, failed)
        return index

    @classmethod
    def empty(cls, storage_url: str, kind: str) -> CacheIndex:
        """An index that knows no part (a pass that must not reuse)."""
        return cls(cache_url(storage_url, kind))

    def add(
        self,
        url: str,
        columns: Sequence[str],
        keys: np.ndarray,
        failed: Sequence[tuple[bytes, str]] = (),
    ) -> None:
        """Register one part: its columns, its keys, and which of them could not be decoded."""
        if self._sealed:
            raise RuntimeError(f"{self.url}: index sealed for reading, no part can be added")
        self.parts.append(url)
        self.columns.append(frozenset(columns) - set(RESERVED))
        self._words.append(key_words(keys))
        self.failed.update(failed)
        self._lookups.clear()

    def seal(self) -> None:
        """Build the lookup of every set of parts a fingerprint is found in, then drop the
        per-part keys (16 bytes a key) that only rebuilding needs: once the pass has computed
        everything, assembly only reads."""
        for fp in set().union(*self.columns) if self.columns else ():
            having = tuple(i for i, cols in enumerate(self.columns) if fp in cols)
            if having not in self._lookups:
                self._lookups[having] = self._build(having)
        self._words.clear()
        self._sealed = True

    def failed_mask(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` are bytes known to be undecodable."""
        if not self.failed:
            return np.zeros(len(keys), dtype=bool)
        return pd.Index(np.asarray(keys, dtype="S32")).isin(list(self.failed))

    def locate(self, keys: np.ndarray, fp: str) -> Located:
        """Part and row of each of ``keys`` in a part that has ``fp``; the newest part wins."""
        having = tuple(i for i, cols in enumerate(self.columns) if fp in cols)
        lookup = self._lookups.get(having)
        if lookup is None and self._sealed:
            lookup = self._build(())  # no part has ``fp``
        elif lookup is None:
            lookup = self._lookups[having] = self._build(having)
        pos = lookup.find(key_words(keys))
        hit = pos >= 0
        part = np.full(len(pos), -1, dtype=np.int64)
        row = np.full(len(pos), -1, dtype=np.int64)
        part[hit] = lookup.part[pos[hit]]
        row[hit] = lookup.row[pos[hit]]
        return Located(part, row)

    def _build(self, having: tuple[int, ...]) -> _Lookup:
        if not having:
            empty = np.array([], dtype=np.uint64)
            return _Lookup(empty, empty, empty.astype(np.int32), empty.astype(np.int32))
        low = np.concatenate([self._words[i][:, 1] for i in having])
        # a stable sort keeps parts in index order among equal keys: the last of each run of
        # equal keys is in the newest part, which wins (a key computed twice by concurrent
        # passes is found in its newest part)
        order = np.argsort(low, kind="stable")
        low = low[order]
        last = np.ones(len(low), dtype=bool)
        last[:-1] = low[1:] != low[:-1]
        keep = order[last]
        del order
        high = np.concatenate([self._words[i][:, 0] for i in having])[keep]
        sizes = np.array([len(self._words[i]) for i in having])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        which = np.searchsorted(starts, keep, side="right") - 1  # position in ``having``
        part = np.asarray(having, dtype=np.int32)[which]
        row = (keep - starts[which]).astype(np.int32)
        return _Lookup(low[last], high, part, row)


def _read_keys(url: str) -> tuple[list[str], np.ndarray, list[tuple[bytes, str]]]:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        wanted = [KEY, STATUS] if STATUS in names else [KEY]
        table = pf.read(columns=wanted)
    keys = table.column(KEY).to_numpy(zero_copy_only=False).astype("S32")
    failed = []
    if STATUS in names:
        status = table.column(STATUS).to_numpy(zero_copy_only=False)
        failed = [(keys[i], status[i]) for i in np.flatnonzero(status != "")]
    return names, keys, failed


class PartReader:
    """Recently used parts, whole, up to ``budget`` bytes (a small LRU), for gathering a
    version's values: the parts a manifest batch touches are each read once for all the batch's
    columns. A budget in bytes, not parts, keeps the driver's memory the same whatever the chunk
    size the parts were written with."""

    def __init__(self, index: CacheIndex, budget: int = 64 << 20):
        self.index, self.budget = index, budget
        self._tables: OrderedDict[int, pa.Table] = OrderedDict()
        self._bytes = 0
        fs, path = storage.filesystem(index.url)
        fs.invalidate_cache(path)  # parts written by workers since the index was listed

    def table(self, part: int) -> pa.Table:
        table = self._tables.get(part)
        if table is not None:
            self._tables.move_to_end(part)
            return table
        table = storage.read_table(self.index.parts[part])
        self._tables[part] = table
        self._bytes += table.nbytes
        while self._bytes > self.budget and len(self._tables) > 1:
            _, evicted = self._tables.popitem(last=False)
            self._bytes -= evicted.nbytes
        return table

    def gather(self, located: Located, columns: tuple[str, ...]) -> dict[str, pa.Array]:
        """``columns`` for every located row, in the order of ``located`` (all must be found)."""
        n = len(located.part)
        order = np.argsort(located.part, kind="stable")
        chunks: dict[str, list[pa.Array]] = {c: [] for c in columns}
        positions: list[np.ndarray] = []
        parts, starts = np.unique(located.part[order], return_index=True)
        bounds = [*starts[1:], n]
        for part, start, end in zip(parts, starts, bounds, strict=True):
            rows = order[start:end]
            taken = self.table(int(part)).select(list(columns)).take(pa.array(located.row[rows]))
            for c in columns:
                chunks[c].append(taken.column(c).combine_chunks())
            positions.append(rows)
        if not positions:
            return {c: pa.array([], type=pa.float64()) for c in columns}
        inverse = np.empty(n, dtype=np.int64)
        inverse[np.concatenate(positions)] = np.arange(n)
        return {c: pa.concat_arrays(chunks[c]).take(pa.array(inverse)) for c in columns}
