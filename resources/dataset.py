"""The dataset root and engine settings, as one Dagster resource."""

from __future__ import annotations

import dagster as dg

from qm_dagster.dataset import DatasetRoot, Version


class QmResource(dg.ConfigurableResource):
    """Where dataset versions live (``QM_DATASETS``) and how the image pass runs."""

    datasets: str
    storage: str = ""
    workers: int = 1
    chunk_size: int = 0  # 0 = automatic
    max_pixels: int = 100_000_000
    embedding_provider: str = ""
    dask_scheduler: str = ""  # empty: the local process pool
    strict_annotations: bool = False  # a malformed annotation record fails the version

    def root(self) -> DatasetRoot:
        return DatasetRoot(self.datasets)

    def version(self, name: str) -> Version:
        return self.root().version(name)
