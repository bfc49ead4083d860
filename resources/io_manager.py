"""Parquet IO manager on a base URL: one file per asset per partition, written atomically."""

from __future__ import annotations

import json
from typing import NamedTuple

import dagster as dg
import pandas as pd

from qm_dagster import storage

LAZY = "qm/lazy"  # input metadata: hand the asset a StoredTable to stream, not a DataFrame
COLUMNS = "qm/columns"  # input metadata: load only these columns (those the table has)
ALIAS = "qm/alias"  # asset metadata: its partitions are Alias pointers to other files


class Alias(NamedTuple):
    """An asset partition that is another partition's stored file (``url``; empty: none)."""

    version: str
    url: str


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames at ``<base_url>/<asset key>/<version>.parquet`` (local path or s3://).

        The layout is the engine's (``qm_dagster.storage.asset_url``), so ``qm_dagster.load`` reads
        the same files without Dagster. Assets that stream their output write that file themselves
        and return a ``StoredTable`` for it; inputs declared with ``metadata={LAZY: True}`` arrive as
        a ``StoredTable`` to read in batches; inputs declared with ``metadata={COLUMNS: [...]}`` load
    only those of the columns the table has (the rest of the file is not read; a metric a
    version lacks is simply absent). An ``Alias`` output is stored as a small JSON pointer;
        loading it loads the file it points at (None when it points at nothing).
    """

    base_url: str

    def _url(self, context: dg.OutputContext | dg.InputContext) -> str:
        key = "/".join(context.asset_key.path)
        if not context.has_asset_partitions:
            return storage.join(self.base_url, key, "all.parquet")
        return storage.asset_url(self.base_url, key, context.asset_partition_key)

    def _alias_url(self, context: dg.OutputContext | dg.InputContext) -> str:
        key = "/".join(context.asset_key.path)
        return storage.join(self.base_url, key, f"{context.asset_partition_key}.json")

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if isinstance(obj, Alias):
            pointer = json.dumps(obj._asdict()).encode()
            storage.write_bytes_atomic(self._alias_url(context), pointer, "application/json")
            return
        url = self._url(context)
        if isinstance(obj, storage.StoredTable):
            if obj.url != url:
                raise ValueError(
                    f"{context.asset_key.to_user_string()}: written at {obj.url}, expected {url}"
                )
            context.add_output_metadata({"dagster/uri": dg.MetadataValue.path(url)})
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a DataFrame, got {type(obj)}"
            )
        storage.write_parquet(url, obj)
        context.add_output_metadata({"dagster/uri": dg.MetadataValue.path(url)})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | storage.StoredTable | None:
        url = self._url(context)
        upstream = context.upstream_output
        if upstream is not None and (upstream.definition_metadata or {}).get(ALIAS):
            url = Alias(**json.loads(storage.read_bytes(self._alias_url(context)))).url
            if not url:
                return None
        if (context.definition_metadata or {}).get(LAZY):
            if not storage.exists(url):
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()} is not stored: {url}"
                )
            return storage.StoredTable(url)
        columns = (context.definition_metadata or {}).get(COLUMNS)
        return storage.read_parquet(url, columns, present_only=True)
