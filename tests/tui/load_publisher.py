"""Publish faces (real JPEGs) and heartbeats at a fixed rate from its own process.

Used by the load test and to measure the rate the monitor keeps up with:
    python -m tests.tui.load_publisher PORT RATE SECONDS [NODES]
Prints the number of faces and heartbeats sent as JSON when done.
"""

from __future__ import annotations

import json
import sys
import time

from facefleet.mqtt import MqttSettings
from tests.support import Publisher
from tests.tui.tui_helpers import face_meta, make_jpeg, status_body


def main() -> None:
    port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    nodes = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    pub = Publisher(MqttSettings(port=port), client_id="load-publisher")
    jpegs = [make_jpeg(i) for i in range(8)]
    sent = faces = 0
    start = time.monotonic()
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            node = f"cam{sent % nodes}"
            if sent % 10 == 0:
                pub.status(
                    node, "detector", status_body(node, "detector", fps=sent % 30), retain=False
                )
            else:
                jpeg = jpegs[sent % len(jpegs)]
                pub.face(face_meta(node, sent, jpeg, face_id=f"f{sent}"), jpeg)
                faces += 1
            sent += 1
        if len(pub.pending) > 5000:
            pub.flush()
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    pub.close()
    print(
        json.dumps(
            {"sent": sent, "faces": faces, "statuses": sent - faces, "seconds": round(elapsed, 3)}
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
