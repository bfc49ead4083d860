"""Parquet IO manager on a base URL: one file per asset per partition, written atomically."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from qm_dagster import storage


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames at ``<base_url>/<asset key>/<version>.parquet`` (local path or s3://).

    The layout is the engine's (``qm_dagster.storage.asset_url``), so ``qm_dagster.load`` reads
    the same files without Dagster.
    """

    base_url: str

    def _url(self, context: dg.OutputContext | dg.InputContext) -> str:
        key = "/".join(context.asset_key.path)
        if not context.has_asset_partitions:
            return storage.join(self.base_url, key, "all.parquet")
        return storage.asset_url(self.base_url, key, context.asset_partition_key)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a DataFrame, got {type(obj)}"
            )
        url = self._url(context)
        storage.write_parquet(url, obj)
        context.add_output_metadata({"dagster/uri": dg.MetadataValue.path(url)})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        return storage.read_parquet(self._url(context))
