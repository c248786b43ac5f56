"""moto's S3 as the benchmarks' S3 endpoint: keep-alive HTTP/1.1, a service latency, a PUT clock.

Usage: `python -m bench.s3_server PORT [--latency-ms MS] [--put-log FILE]`. Serves moto's S3
application (the one `python -m moto.server` dispatches S3 requests to) with three differences
that make it behave like S3 as a client sees it rather than like a development server:

- connections stay open between requests (HTTP/1.1 keep-alive, as S3 does); werkzeug's
  development server closes every connection, which costs both sides a TCP connection per PUT;
- with `--latency-ms`, every request is answered after that much extra time, spent sleeping
  (no CPU), like the network round trip and service time of real S3 (tens of ms per PUT);
- with `--put-log`, each PUT that answered 200 appends `<unix time> <path>` to FILE (S3 reports
  LastModified in whole seconds only), for the latency benchmark.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

#: Response headers this server sets itself (the body is sent whole, with its length).
_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive"}


class KeepAliveHandler(MotoRequestHandler):
    """moto's request handling, but the body is read whole before the application runs and
    the response goes out with a Content-Length, so the connection can serve the next request.
    Chunked request bodies (not sent by boto3 for PutObject) still close the connection."""

    latency_s = 0.0
    put_log: TextIO | None = None
    log_lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle's algorithm holds
        # the body back until the client's delayed ACK (40 ms) on a kept-alive connection
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, *args: Any) -> None:
        """No access log: a line per request costs CPU the benchmarks measure."""

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.make_environ()
        chunked = bool(environ.get("wsgi.input_terminated"))
        if not chunked:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"] = io.BytesIO(self.rfile.read(length) if length else b"")
        if self.latency_s:
            time.sleep(self.latency_s)
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
            answer[:] = [status, headers]
            return lambda data: None  # the legacy write() callable; moto does not use it

        try:
            body = b"".join(self.server.app(environ, start_response))
        except Exception as exc:  # never hang the client: a 500 with the reason
            body, answer[:] = f"{type(exc).__name__}: {exc}".encode(), ["500 Internal", []]
        status, headers = answer
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        content_length = str(len(body))
        for name, value in headers:
            if name.lower() == "content-length" and self.command == "HEAD":
                content_length = value  # HEAD reports the object's length, sends no body
            elif name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", content_length)
        if chunked:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        if self.command == "PUT" and code == "200" and self.put_log is not None:
            with self.log_lock:
                self.put_log.write(f"{time.time():.6f} {environ.get('PATH_INFO', '')}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_server", description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--put-log", help="append '<unix time> <path>' per stored PUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.latency_ms < 0:
        raise SystemExit("bench.s3_server: --latency-ms must be >= 0")
    os.environ.setdefault("MOTO_PORT", str(args.port))
    KeepAliveHandler.latency_s = args.latency_ms / 1000
    if args.put_log:
        KeepAliveHandler.put_log = open(args.put_log, "a", buffering=1)  # noqa: SIM115 - lives as long as the server
    KeepAliveHandler.protocol_version = "HTTP/1.1"
    app = create_backend_app("s3")  # S3 only: no dispatch on the host of every request
    server = make_server(
        "127.0.0.1", args.port, app, threaded=True, request_handler=KeepAliveHandler
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
