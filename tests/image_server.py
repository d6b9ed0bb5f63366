"""A real HTTP server on 127.0.0.1 for the image-fetch tests: images with ETags, and every way a
merchant's CDN goes wrong (slow, dripping, too big, redirecting to file://, 404/500/429, HTML)."""
from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import numpy as np
import pytest
from PIL import Image


def jpeg(colour=(200, 40, 40), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class ImageServer:
    def __init__(self):
        self.images: dict[str, bytes] = {"/ok.jpg": jpeg()}
        self.hits: Counter = Counter()  # path -> requests
        self.full_bodies: Counter = Counter()  # path -> 200 responses with a body
        self.fail_first: dict[str, tuple[int, int]] = {}  # path -> (status, times): fail, then serve
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                server.hits[path] += 1
                if path in server.fail_first and server.fail_first[path][1] > 0:
                    status, times = server.fail_first[path]
                    server.fail_first[path] = (status, times - 1)
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path == "/slow":
                    time.sleep(1.5)
                if path == "/drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    try:
                        for b in jpeg():
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(0.05)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if path == "/big":  # no Content-Length: only the bytes read tell
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.end_headers()
                    try:
                        self.wfile.write(jpeg()[:200])
                        for _ in range(64):
                            self.wfile.write(b"\0" * 65536)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if path.startswith("/redirect-to/"):
                    self.send_response(302)
                    self.send_header("Location", path[len("/redirect-to/"):].replace("__", "://", 1))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path.startswith("/loop"):
                    n = int(path[5:] or 0)
                    self.send_response(302)
                    self.send_header("Location", f"/loop{n + 1}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path == "/page.jpg":
                    body = b"<html><body>Not found, but with a 200</body></html>"
                    self._send(200, body, "text/html")
                    return
                body = server.images.get(path)
                if body is None:
                    self._send(404, b"no such image", "text/plain")
                    return
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                server.full_bodies[path] += 1
                self._send(200, body, "image/jpeg", etag)

            def _send(self, status, body, kind, etag=None):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()
