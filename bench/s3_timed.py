"""moto's S3 server with a clock on every successful PUT of a face: for the latency benchmark.

Usage: `python -m bench.s3_timed PORT LOGFILE`. Serves exactly what `python -m moto.server`
serves, and after each PUT that answered 200 appends `<unix time> <path>` to LOGFILE (S3
reports LastModified in whole seconds only).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def main() -> int:
    port, logfile = int(sys.argv[1]), sys.argv[2]
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    log = open(logfile, "a", buffering=1)  # noqa: SIM115 - lives as long as the server

    def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        status: list[str] = []

        def capture(code: str, headers: Any, *rest: Any) -> Any:
            status.append(code)
            return start_response(code, headers, *rest)

        body = app(environ, capture)
        if environ.get("REQUEST_METHOD") == "PUT" and status and status[0].startswith("200"):
            with lock:
                log.write(f"{time.time():.6f} {environ.get('PATH_INFO', '')}\n")
        return body  # type: ignore[no-any-return]

    run_simple("127.0.0.1", port, timed, threaded=True, request_handler=MotoRequestHandler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
