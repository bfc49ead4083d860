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


def test_a_local_walk_lists_what_fsspec_lists(tmp_path, monkeypatch):
    """Local folders are scanned without fsspec's stat of every entry; the walk is the same:
    sorted paths relative to the root, folders (with ``folders``) before their files, a
    symbolic link listed as a file and never descended."""
    (tmp_path / "b" / "c").mkdir(parents=True)
    for rel in ("a.jpg", "b/x.png", "b/c/y.png", "b.jpg", "z.txt"):
        (tmp_path / rel).write_bytes(b"1")
    (tmp_path / "link").symlink_to(tmp_path / "b")
    (tmp_path / "b" / "to_file.png").symlink_to(tmp_path / "a.jpg")
    fast = [list(storage.walk_files(str(tmp_path), folders=f)) for f in (False, True)]
    monkeypatch.setattr(storage, "is_local", lambda fs: False)  # fsspec's own listing
    slow = [list(storage.walk_files(str(tmp_path), folders=f)) for f in (False, True)]
    assert fast == slow
    assert fast[1] == [
        "a.jpg", "b.jpg", "b/", "b/c/", "b/c/y.png", "b/to_file.png", "b/x.png", "link", "z.txt",
    ]  # fmt: skip
