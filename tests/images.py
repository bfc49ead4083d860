"""Helpers that write test images and versions."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def write_image(path: Path, rgb: np.ndarray) -> bytes:
    """Encode ``rgb`` as PNG (lossless) or JPEG by suffix; return the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def commit(version_dir: Path, **meta) -> None:
    (version_dir / "version.json").write_text(json.dumps(meta))


def checkerboard(h: int = 16, w: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    gray = np.where((yy + xx) % 2 == 0, 255, 0).astype(np.uint8)
    return np.dstack([gray] * 3)


def solid(rgb: tuple[int, int, int], h: int = 12, w: int = 20) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def png_with_header(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims ``width`` x ``height`` but whose data is tiny."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def real_photos() -> dict[str, np.ndarray]:
    """Real photos bundled with scikit-image (RGB)."""
    import skimage.data

    return {n: getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea", "rocket")}


def content_id(path: Path) -> str:
    """The manifest's content id of a local file (a digest of its bytes)."""
    from qm_dagster.manifest import inspect_bytes

    return inspect_bytes(Path(path).read_bytes(), 10**12).content_hash
