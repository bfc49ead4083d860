"""``qm explore``: a local web page over a version's quality tables. The standard library's
threaded HTTP server, a JSON API answered by :mod:`qm_dagster.explore.query`, thumbnails and
crops decoded on demand; the page is plain HTML and JavaScript shipped in ``static/``, nothing
fetched from the network."""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np
import orjson

from qm_dagster import storage
from qm_dagster.config import Settings
from qm_dagster.errors import QmError
from qm_dagster.explore.query import Query, VersionData
from qm_dagster.passes.decode import decode

THUMB = 192  # longest side of a grid thumbnail, pixels
LARGE = 1600  # longest side of the detail view's image
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
BROWSER_FORMATS = (b"\xff\xd8\xff", b"\x89PNG")  # JPEG and PNG go to the browser as stored


class Explorer:
    """The versions a server answers for, each opened once (DuckDB views) when first asked."""

    def __init__(self, settings: Settings, version: str | None = None):
        self.settings = settings
        self.default = version or self.latest()
        self._open: dict[str, VersionData] = {}
        self._lock = threading.Lock()
        self.data(self.default)  # fail now, with the message, not on the first request

    def versions(self) -> list[str]:
        """Versions whose image quality table is materialized."""
        folder = storage.join(self.settings.storage, "analysis/quality_table/image")
        return [f[: -len(".parquet")] for f in storage.walk_files(folder) if f.endswith(".parquet")]

    def latest(self) -> str:
        """The most recently materialized version (its image quality table's modification time)."""
        folder = storage.join(self.settings.storage, "analysis/quality_table/image")
        fs, path = storage.filesystem(folder)
        found = (
            [e for e in fs.ls(path, detail=True) if e["name"].endswith(".parquet")]
            if fs.exists(path)
            else []
        )
        if not found:
            raise QmError(
                f"no materialized version under {self.settings.storage}: run qm materialize VERSION first"
            )
        newest = max(found, key=lambda e: (e.get("mtime") or e.get("LastModified") or 0, e["name"]))
        return newest["name"].rstrip("/").rsplit("/", 1)[-1][: -len(".parquet")]

    def data(self, version: str | None) -> VersionData:
        version = version or self.default
        with self._lock:
            if version not in self._open:
                self._open[version] = VersionData(self.settings, version)
            return self._open[version]


@functools.lru_cache(maxsize=4096)
def thumbnail(
    url: str, box: tuple[float, float, float, float] | None, side: int = THUMB
) -> bytes | None:
    """A JPEG of the image (or of a box with a margin of context, the box outlined), longest
    side ``side``; ``None`` when the file cannot be read or decoded. Cached (~10 KB each)."""
    try:
        bgr = decode(storage.read_bytes(url))
    except OSError:
        return None
    if bgr is None:
        return None
    if box is not None:
        bgr = _crop(bgr, box)
    scale = min(1.0, side / max(bgr.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 82])
    return buf.tobytes() if ok else None


def _crop(bgr: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The box with a quarter of its size around it (at least 8 px), the box drawn in."""
    x, y, w, h = box
    pad = max(8.0, 0.25 * max(w, h))
    x0, y0 = max(0, int(x - pad)), max(0, int(y - pad))
    x1, y1 = (
        min(bgr.shape[1], int(np.ceil(x + w + pad))),
        min(bgr.shape[0], int(np.ceil(y + h + pad))),
    )
    if x1 <= x0 or y1 <= y0:
        return bgr
    crop = np.ascontiguousarray(bgr[y0:y1, x0:x1])
    thick = max(1, round(max(crop.shape[:2]) / 120))
    cv2.rectangle(
        crop, (int(x - x0), int(y - y0)), (int(x + w - x0), int(y + h - y0)), (0, 220, 255), thick
    )
    return crop


def image_bytes(url: str) -> tuple[bytes, str] | None:
    """The image for the detail view: JPEG and PNG as stored, anything else (TIFF, WebP, …)
    re-encoded as PNG; very large images scaled to ``LARGE`` (boxes are drawn in the
    manifest's pixel size, so any scale works)."""
    try:
        data = storage.read_bytes(url)
    except OSError:
        return None
    if data.startswith(BROWSER_FORMATS) and len(data) < 8_000_000:
        return data, "image/jpeg" if data.startswith(b"\xff\xd8") else "image/png"
    encoded = thumbnail(url, None, LARGE)
    return (encoded, "image/jpeg") if encoded else None


class Handler(BaseHTTPRequestHandler):
    """Routes: the page and its files; ``/api/meta|page|detail|slice``; ``/thumb``, ``/image``."""

    explorer: Explorer  # set on the subclass made by make_server
    server_version = "qm-explore"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: one line per thumbnail would drown the terminal

    def do_GET(self) -> None:
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._answer(lambda: self._get(url.path, params))

    def do_POST(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(lambda: self._post(url.path, self.rfile.read(length)))

    def _get(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        if path in STATIC:
            name, kind = STATIC[path]
            return (
                200,
                kind,
                resources.files("qm_dagster.explore").joinpath("static", name).read_bytes(),
            )
        data = self.explorer.data(params.get("version"))
        if path == "/api/meta":
            return _json(
                {
                    **data.meta(),
                    "versions": self.explorer.versions(),
                    "default": self.explorer.default,
                }
            )
        if path == "/api/detail":
            return _json(data.detail(_required(params, "id")))
        if path in ("/thumb", "/image"):
            found = data.image_url(_required(params, "id"))
            if found is None:
                return _error(HTTPStatus.NOT_FOUND, f"no image {params['id']!r}")
            if path == "/image":
                image = image_bytes(found[0])
            else:
                jpeg = thumbnail(found[0], _box(params.get("box")))
                image = (jpeg, "image/jpeg") if jpeg else None
            if image is None:
                return _error(HTTPStatus.NOT_FOUND, f"image {params['id']!r} cannot be decoded")
            return 200, image[1], image[0]
        return _error(HTTPStatus.NOT_FOUND, f"no such page {path}")

    def _post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        try:
            raw = json.loads(body or b"{}")
        except ValueError as exc:
            raise QmError(f"request body is not JSON: {exc}") from exc
        data = self.explorer.data(raw.get("version"))
        query = Query.from_json(raw.get("query") or {})
        if path == "/api/page":
            return _json(data.page(query))
        if path == "/api/slice":
            return _json(data.as_slice(query, str(raw.get("name") or "my_slice")))
        return _error(HTTPStatus.NOT_FOUND, f"no such endpoint {path}")

    def _answer(self, route) -> None:
        try:
            status, kind, body = route()
        except QmError as exc:
            status, kind, body = _error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:  # a bug: the page shows the message, the terminal the trace
            traceback.print_exc()
            status, kind, body = _error(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}"
            )
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header(
            "Cache-Control", "max-age=3600" if kind.startswith("image/") else "no-store"
        )
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)  # fails when the page moved on (a scrolled-away thumbnail)


def _json(value: Any) -> tuple[int, str, bytes]:
    return 200, "application/json", orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, message: str) -> tuple[int, str, bytes]:
    return int(status), "application/json", orjson.dumps({"error": message})


def _required(params: dict[str, str], name: str) -> str:
    if name not in params:
        raise QmError(f"missing parameter {name!r}")
    return params[name]


def _box(raw: str | None) -> tuple[float, float, float, float] | None:
    if not raw:
        return None
    try:
        x, y, w, h = (float(v) for v in raw.split(","))
    except ValueError as exc:
        raise QmError(f"box {raw!r}: expected x,y,w,h") from exc
    return x, y, w, h


def make_server(
    settings: Settings, version: str | None = None, host: str = "127.0.0.1", port: int = 8765
) -> ThreadingHTTPServer:
    """A server for the explorer (not yet serving: call ``serve_forever``); port 0 picks one."""
    explorer = Explorer(settings, version)
    handler = type("BoundHandler", (Handler,), {"explorer": explorer})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
