"""Reading and writing through fsspec URLs (local paths, s3://, memory://) with atomic writes."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
from fsspec.core import url_to_fs

if TYPE_CHECKING:
    import pandas as pd


def join(base: str, *parts: str) -> str:
    """Join URL or path segments with ``/``."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving ``url`` and the path inside it."""
    return url_to_fs(url)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def read_bytes(url: str) -> bytes:
    """Whole content of one file."""
    fs, path = filesystem(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def write_bytes_atomic(url: str, data: bytes, content_type: str | None = None) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a torn one.

    Local files go to a temporary name in the same folder and are renamed over the target; object
    stores get one PUT (s3fs uses a multipart upload above its block size, which also appears only
    when complete). ``content_type`` is stored on S3 objects so browsers render them.
    """
    fs, path = filesystem(url)
    if "file" in _protocols(fs):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        extra = {"ContentType": content_type} if content_type and "s3" in _protocols(fs) else {}
        fs.pipe_file(path, data, **extra)


def write_parquet(url: str, frame: pd.DataFrame) -> None:
    """Serialise ``frame`` to Parquet in memory, then write it atomically."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    write_bytes_atomic(url, buf.getvalue())


def read_parquet(url: str) -> pd.DataFrame:
    import pandas as pd  # lazy: image-pass workers use this module without pandas

    fs, path = filesystem(url)
    with fs.open(path, "rb") as fh:
        return pd.read_parquet(fh)


def asset_url(base: str, asset_key: str, version: str) -> str:
    """Where one asset's partition lives: ``<base>/<asset key>/<version>.parquet``."""
    return join(base, asset_key, f"{version}.parquet")


def browser_url(url: str, expires: int = 7 * 24 * 3600) -> str:
    """A link a browser can open: ``file://`` for local files, a pre-signed HTTPS URL (valid for
    ``expires`` seconds, S3's maximum is 7 days) for object stores that sign, else ``url``."""
    fs, path = filesystem(url)
    if "file" in _protocols(fs):
        return Path(path).resolve().as_uri()
    try:
        return fs.sign(path, expiration=expires)
    except NotImplementedError:
        return url


def walk_files(url: str) -> Iterator[str]:
    """Every file under ``url``, as paths relative to it, sorted."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    if not fs.exists(root):
        return
    for path in sorted(fs.find(root)):
        rel = path[len(root) :].lstrip("/")
        if rel:
            yield rel
