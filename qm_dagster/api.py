"""The notebook API: read any materialized asset partition as a DataFrame, no Dagster needed."""

from __future__ import annotations

import pandas as pd

from qm_dagster import storage
from qm_dagster.config import Settings
from qm_dagster.dataset import check_version_name
from qm_dagster.errors import QmError


def load(asset: str, version: str, settings: Settings | None = None) -> pd.DataFrame:
    """The table of ``asset`` (e.g. ``"data/brightness"``) for dataset ``version``.

    Reads ``<QM_STORAGE>/<asset>/<version>.parquet``, the file the IO manager wrote.
    """
    settings = settings or Settings.load()
    key = asset.strip("/")
    url = storage.asset_url(settings.storage, key, check_version_name(version))
    if not storage.exists(url):
        raise QmError(
            f"{key} is not materialized for version {version!r} (looked for {url}); "
            f"run: qm materialize {version} --select '{key}'"
        )
    return storage.read_parquet(url)
