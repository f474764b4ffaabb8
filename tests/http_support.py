"""Test support: a loopback HTTP server of one payload that honours Range requests as a CDN does
(206 with a matching Content-Range; 416 past the end), for the download-cache tests."""

from __future__ import annotations

import contextlib
import http.server
import sys
import threading


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    ranges: list = []  # the Range header of every request, in order (None without one)

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        if start >= len(self.payload) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(self.payload)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a client that stops reading (a download refused part-way, as the tests provoke) is not an
        # error of the server; anything else is reported as usual
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(payload: bytes):
    """``(server, handler class)`` serving ``payload`` on 127.0.0.1 (any path); stopped on exit."""
    handler = type("H", (RangeHandler,), {"payload": payload, "ranges": []})
    srv = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv, handler
    finally:
        srv.shutdown()
        srv.server_close()
