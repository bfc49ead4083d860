"""An S3 endpoint with faults: a reverse proxy on 127.0.0.1 in front of the moto server.

Every request is forwarded to moto (which keeps the data) unless a fault applies:
- ``throttle_first``: the first request of each (method, path) answers 503 SlowDown, as S3 does
  under load; its retry goes through;
- ``stall_first``: the first forwarded GET of each path matching a pattern waits ``stall``
  seconds before answering (a read timeout on the client); its retry goes through;
- ``go_down_after``: after that many requests matching a pattern, the endpoint goes away (the
  listening socket and every open connection are closed: connection refused), until ``start``.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyS3:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.port = 0
        self.throttle_first = False
        self.stall_first: str | None = None  # regex of paths
        self.stall = 0.0
        self.down_pattern: str | None = None
        self.down_after = 0
        self.counts = {"requests": 0, "throttled": 0, "stalled": 0, "refused": 0}
        self._seen: set[tuple[str, str]] = set()
        self._stalled: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port after ``stop``)."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self):
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                super().finish()

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """The endpoint goes away: no listener, every open connection cut."""
        server, self._server = self._server, None
        if server is None:
            return
        threading.Thread(target=server.shutdown, daemon=True).start()
        server.socket.close()
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def forget(self) -> None:
        """Every request counts as a first one again."""
        self._seen.clear()
        self._stalled.clear()

    def go_down_after(self, pattern: str, requests: int) -> None:
        self.down_pattern, self.down_after = pattern, requests

    def _body(self, handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    handler.rfile.readline()
                    return b"".join(chunks)
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = self._body(handler)
        key = (handler.command, handler.path)
        with self._lock:
            self.counts["requests"] += 1
            first = key not in self._seen
            self._seen.add(key)
            going_down = False
            request = f"{handler.command} {handler.path}"
            if self.down_pattern and re.search(self.down_pattern, request):
                self.down_after -= 1
                going_down = self.down_after < 0
        if going_down:
            self.counts["refused"] += 1
            handler.close_connection = True
            self.stop()
            return
        if first and self.throttle_first:
            self.counts["throttled"] += 1
            self._reply(handler, 503, {"Content-Type": "application/xml"}, SLOW_DOWN)
            return
        stall = self.stall_first and handler.command == "GET"
        if (
            stall
            and handler.path not in self._stalled
            and re.search(self.stall_first, handler.path)
        ):
            self._stalled.add(handler.path)
            self.counts["stalled"] += 1
            time.sleep(self.stall)
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(body))
        upstream.request(handler.command, handler.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        head = handler.command == "HEAD"  # its Content-Length is the object's: keep it
        out = {
            k: v
            for k, v in response.getheaders()
            if k.lower() not in ("transfer-encoding", "connection")
            and (head or k.lower() != "content-length")
        }
        upstream.close()
        self._reply(handler, response.status, out, data, head=head)

    @staticmethod
    def _reply(handler, status: int, headers: dict, data: bytes, head: bool = False) -> None:
        try:
            handler.send_response(status)
            for k, v in headers.items():
                handler.send_header(k, v)
            if not head:
                handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if not head:
                handler.wfile.write(data)
        except OSError:
            handler.close_connection = True
