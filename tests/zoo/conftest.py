"""A local HTTP server that publishes the shared reference checkpoints as the reference's bucket does
(``BASE/<model>/model.ckpt.*``), with Range requests and faults a test can ask for."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest


class CheckpointServer:
    """Serves the files under ``root`` on 127.0.0.1 at a free port.

    - ``requests``: ``(path, Range header or None)`` of every GET, in order.
    - ``cut[path] = n``: the next response for ``path`` announces the whole length but the connection
      closes after ``n`` bytes of the body.
    - ``corrupt[path] = k``: the next ``k`` responses for ``path`` have one byte flipped.
    - ``hold[path] = ready``: responses for ``path`` wait (up to 60 s) until ``ready()`` is true.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}
        self.corrupt: dict[str, int] = {}
        self.hold: dict[str, Callable[[], bool]] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, *args: object) -> None:
                pass  # keep the test output clean

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GETs of ``path`` so far (None: a request for the whole file)."""
        with self.lock:
            return [r for p, r in self.requests if p == path]

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        rel = unquote(h.path.split("?", 1)[0].lstrip("/"))
        rng = h.headers.get("Range")
        with self.lock:
            self.requests.append((rel, rng))
            cut = self.cut.pop(rel, None)
            corrupt = self.corrupt.get(rel, 0) > 0
            if corrupt:
                self.corrupt[rel] -= 1
            ready = self.hold.get(rel)
        file = self.root / rel
        if ".." in Path(rel).parts or not file.is_file():
            h.send_error(404)
            return
        if ready is not None:
            deadline = time.monotonic() + 60
            while not ready() and time.monotonic() < deadline:
                time.sleep(0.02)
        data = bytearray(file.read_bytes())
        if corrupt:
            data[len(data) // 2] ^= 0xFF
        start = 0
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, f"unexpected Range header {rng!r}"
            start = int(m[1])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = bytes(data[start:])
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        h.wfile.write(body if cut is None else body[:cut])
        h.wfile.flush()
        h.close_connection = True


@pytest.fixture
def server(reference_dir: Path) -> Iterator[CheckpointServer]:
    srv = CheckpointServer(reference_dir)
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: CheckpointServer) -> Path:
    """An empty cache, the local server as the base URL, the network allowed."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CONVRNN_HOME", str(root))
    monkeypatch.setenv("CONVRNN_BASE_URL", server.url)
    monkeypatch.delenv("CONVRNN_OFFLINE", raising=False)
    return root
