"""Embeddings from the user's own model instead of the built-in features.

``embedding_provider`` is either ``"module:function"`` (called in the image pass with each RGB
image, returning a 1-D vector) or the URL of precomputed vectors with a ``{version}`` placeholder:
a Parquet file with ``file_name`` and ``vector`` columns, or a ``.npy`` matrix whose rows follow
the version's images sorted by ``file_name``.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable

import numpy as np
import pandas as pd

from qm_dagster import storage
from qm_dagster.errors import QmError


def is_function(provider: str) -> bool:
    return (
        bool(provider) and "{version}" not in provider and ":" in provider and "/" not in provider
    )


def load_function(provider: str) -> Callable[[np.ndarray], np.ndarray]:
    module, _, name = provider.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise QmError(f"embedding_provider {provider!r} cannot be loaded: {exc}") from exc


def precomputed(provider: str, version: str, images: pd.DataFrame) -> list[np.ndarray]:
    """Vectors for ``images`` (``file_name`` column, in its order) from the provider's file."""
    url = provider.replace("{version}", version)
    if not storage.exists(url):
        raise QmError(f"embedding_provider file {url} does not exist")
    if url.endswith(".npy"):
        matrix = np.load(io.BytesIO(storage.read_bytes(url)))
        names = sorted(images.file_name)
        if len(matrix) != len(names):
            raise QmError(
                f"{url}: {len(matrix)} rows for {len(names)} images (rows follow sorted file names)"
            )
        by_name = dict(zip(names, matrix, strict=True))
    else:
        table = storage.read_parquet(url)
        missing_columns = {"file_name", "vector"} - set(table.columns)
        if missing_columns:
            raise QmError(f"{url}: missing columns {sorted(missing_columns)}")
        by_name = dict(zip(table.file_name, table.vector, strict=True))
    missing = [n for n in images.file_name if n not in by_name]
    if missing:
        raise QmError(f"{url}: no vector for {len(missing)} images, e.g. {missing[:3]}")
    return [np.asarray(by_name[n], dtype=np.float32) for n in images.file_name]
