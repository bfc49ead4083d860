"""Atomic writes: a failed write leaves the previous file whole and no temporary behind."""

from __future__ import annotations

import pandas as pd
import pytest

from qm_dagster import storage


def test_parquet_round_trip_and_atomic_replace(tmp_path, monkeypatch):
    url = storage.asset_url(str(tmp_path), "data/brightness", "v1")
    first = pd.DataFrame({"image_id": [1, 2], "value": [0.1, 0.2]})
    storage.write_parquet(url, first)
    pd.testing.assert_frame_equal(storage.read_parquet(url), first)

    import os

    def crash(src, dst):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.write_parquet(url, pd.DataFrame({"image_id": [3], "value": [0.3]}))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(storage.read_parquet(url), first)
    assert sorted(p.name for p in (tmp_path / "data" / "brightness").iterdir()) == ["v1.parquet"]


def test_memory_filesystem_urls():
    url = "memory://qm/storage/data/x/v1.parquet"
    storage.write_parquet(url, pd.DataFrame({"value": [1.0]}))
    assert storage.exists(url)
    assert storage.read_parquet(url).value.tolist() == [1.0]
