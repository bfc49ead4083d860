"""Dagster resources: the dataset root, engine settings and the Parquet IO manager."""

from resources.dataset import QmResource
from resources.io_manager import ParquetIOManager

__all__ = ["ParquetIOManager", "QmResource"]
