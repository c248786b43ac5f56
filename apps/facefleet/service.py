"""What every long-running service shares: logging, signals, and the retained status heartbeat."""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from facefleet import __version__
from facefleet.contract import ServiceFigures, Status, status_topic, utc_timestamp, valid_node
from facefleet.mqtt import ConnectionTracker

log = logging.getLogger(__name__)


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr without timestamps when journald is the reader (it adds its own)."""
    under_systemd = "JOURNAL_STREAM" in os.environ
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_systemd
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # paho logs every failed reconnect attempt as an error; ConnectionTracker reports outages
    logging.getLogger("facefleet.mqtt.paho").setLevel(logging.CRITICAL)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def stop_event() -> threading.Event:
    """An Event set by SIGTERM or SIGINT, so loops end and `finally` blocks run."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def os_release(path: str = "/etc/os-release") -> str:
    """PRETTY_NAME of os-release (platform.freedesktop_os_release needs Python 3.10)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                if key == "PRETTY_NAME":
                    return value.strip("\"'")
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def node_platform() -> dict[str, str]:
    """What this process runs on, for the heartbeat: architecture, OS, Python, and the OpenCV
    version when this service has loaded OpenCV (the detector)."""
    found = {
        "arch": platform.machine(),
        "os": os_release(),
        "python": platform.python_version(),
    }
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        found["opencv"] = str(getattr(cv2, "__version__", "unknown"))
    return found


def instance_id(boot_id_file: str = "/proc/sys/kernel/random/boot_id") -> str:
    """This process, for the heartbeat: the first 8 characters of the boot id and the pid.
    Not secret; two devices (or two processes) with one identity report different ones."""
    try:
        with open(boot_id_file, encoding="ascii") as handle:
            boot = handle.read().strip().replace("-", "")[:8]
    except OSError:
        boot = ""
    return f"{boot or socket.gethostname()}-{os.getpid()}"


#: Instance ids kept by `own_instances`.
KEPT_INSTANCES = 16


def own_instances(path: Path, current: str) -> frozenset[str]:
    """This service's instance ids: `current` and the last KEPT_INSTANCES - 1 before it, kept
    in `path` (one a line; a file that cannot be read or written starts a new list)."""
    try:
        earlier = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        earlier = []
    kept = [*[i for i in earlier if i != current][-(KEPT_INSTANCES - 1) :], current]
    try:
        path.write_text("".join(f"{i}\n" for i in kept), encoding="ascii")
    except OSError as exc:
        log.warning("could not keep the instance id in %s: %s", path, exc.strerror or exc)
    return frozenset(kept)


def certificate_expiry(cert_file: str) -> str | None:
    """When the certificate in `cert_file` expires (UTC timestamp), None when unreadable (the
    connection reports an unusable certificate itself)."""
    from cryptography import x509  # only services with a certificate pay for the import

    try:
        with open(cert_file, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
    except (OSError, ValueError):
        return None
    return utc_timestamp(cert.not_valid_after_utc)


def resolve_node(node: str) -> str:
    """The configured node name, or the short host name when none is set."""
    name = node or socket.gethostname().split(".")[0]
    if not valid_node(name):
        raise ValueError(f"node name {name!r} is not usable as a topic level")
    return name


class Heartbeat:
    """Retained JSON status on `<prefix>/<node>/status/<service>`, repeated every interval.

    It carries this process's instance id, the expiry of the client certificate the link
    presents (`cert_file`), and how often the session was taken over (`session`)."""

    def __init__(
        self,
        client: mqtt.Client,
        prefix: str,
        node: str,
        service: str,
        interval_s: float,
        figures: Callable[[], ServiceFigures],
        *,
        cert_file: str = "",
        session: ConnectionTracker | None = None,
    ) -> None:
        self.client = client
        self.topic = status_topic(prefix, node, service)
        self.node = node
        self.service = service
        self.interval_s = interval_s
        self.figures = figures
        self.started = time.time()
        self.platform = node_platform()
        self.instance = instance_id()
        self.cert_expires = certificate_expiry(cert_file) if cert_file else None
        self.session = session
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        topic, payload = self.will()
        client.will_set(topic, payload, qos=1, retain=True)

    def payload(self, state: str) -> bytes:
        figures = None
        try:
            figures = self.figures()
        except Exception:  # a broken figure must not silence the heartbeat
            log.exception("collecting status figures failed")
        status = Status(
            state=state,
            service=self.service,
            node=self.node,
            version=__version__,
            ts=utc_timestamp(),
            interval_s=self.interval_s,
            uptime_s=round(time.time() - self.started, 1),
            platform=self.platform,
            figures=figures,
            instance=self.instance,
            cert_expires=self.cert_expires,
            taken_over=self.session.taken_over if self.session else None,
            taken_over_at=self.session.taken_over_at if self.session else None,
        )
        return status.encode()

    def will(self) -> tuple[str, bytes]:
        """The last will: this topic, `offline`, retained (installed on the client here, before
        it connects)."""
        status = Status(
            "offline",
            self.service,
            self.node,
            version=__version__,
            interval_s=self.interval_s,
            instance=self.instance,
            cert_expires=self.cert_expires,
        )
        return self.topic, status.encode()

    def publish(self, state: str = "online") -> mqtt.MQTTMessageInfo:
        return self.client.publish(self.topic, self.payload(state), qos=1, retain=True)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"{self.service}-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.client.is_connected():
                self.publish("online")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish `stopped` (retained) and wait, bounded, until the broker has it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        if self.client.is_connected():
            info = self.publish("stopped")
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError):
                log.warning("could not publish the stopped state")
