"""`facefleet demo`: the whole pipeline on one machine.

Two real Mosquitto brokers on free loopback ports (edge: plain, local; cloud: TLS with client
certificates and the fleet ACL), the four services as subprocesses with generated configs, the
filesystem sink under --storage, and the monitor in the foreground (or progress lines with
--headless). With --until-eof the demo stops once the source has ended and every published face
is accounted for downstream, and prints a JSON summary as its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from facefleet.config import ConfigError, dump_toml
from facefleet.contract import DetectorFigures, ForwarderFigures, ProcessorFigures
from facefleet.detector.settings import DetectorChoice, choose_detector
from facefleet.health import StatusWatch
from facefleet.localbroker import MONITOR_IDENTITY, LocalBroker
from facefleet.shared import default_yunet_model

log = logging.getLogger(__name__)

EDGE_NODE = "demo-edge"
CLOUD_NODE = "demo-cloud"
HEARTBEAT_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default="synthetic:",
        help="detector input: camera (/dev/video0 or 0), video file, image folder, RTSP URL, "
        "GStreamer pipeline, or synthetic: (the default: a synthetic test scene, not a camera; "
        "8 generated persons, each with its own look, enter, cross the room and leave over 40 s; "
        "works offline; parameters: synthetic:?persons=N&seconds=S&fps=F&size=WxH&seed=K)",
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=Path(".demo/storage"),
        help="where the processor stores faces (default .demo/storage; kept across runs)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="empty the storage directory before the run"
    )
    parser.add_argument(
        "--until-eof",
        action="store_true",
        help="stop once the source has ended and everything is drained (default: run until ^C)",
    )
    parser.add_argument("--headless", action="store_true", help="no monitor UI; progress lines")
    parser.add_argument(
        "--mode",
        choices=("best", "every-frame"),
        default="best",
        help="best: one crop per person (default); every-frame: every face of every frame, "
        "as the course homework facefleet grew out of did",
    )
    parser.add_argument("--encoding", choices=("jpeg", "png"), default="jpeg")
    parser.add_argument(
        "--backend",
        choices=("auto", "yunet", "haar"),
        default="auto",
        help="auto: YuNet when its model is found (--model or $FACEFLEET_SHARED), else Haar",
    )
    parser.add_argument("--model", type=Path, help="YuNet ONNX file or Haar cascade XML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra detector setting, e.g. detection.haar_scale_factor=1.3 (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="--until-eof: give up draining after this many seconds (600)",
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=30.0,
        help="--until-eof: give up when the source has not delivered a frame after this many "
        "seconds (30)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs, broker data)"
    )


def choose_detection(args: argparse.Namespace) -> DetectorChoice:
    choice = choose_detector(args.backend, args.model, default_yunet_model())
    if choice.note:
        log.info("%s", choice.note)  # and in the monitor (Demo.notes): the UI hides this line
    return choice


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        tables.setdefault(section, {})[name] = value
    return tables


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.detection = choose_detection(args)
        #: what the demo printed before the monitor took the screen, passed to it (--note)
        self.notes: list[str] = [self.detection.note] if self.detection.note else []
        self.overrides = parse_overrides(args.overrides)
        self.workdir = Path(tempfile.mkdtemp(prefix="facefleet-demo-"))
        self.storage = args.storage.resolve()
        if args.fresh:
            shutil.rmtree(self.storage, ignore_errors=True)
        self.edge = LocalBroker("edge", workdir=self.workdir / "edge-broker")
        self.cloud = LocalBroker(
            "cloud", workdir=self.workdir / "cloud-broker", processors=(CLOUD_NODE,)
        )
        self.services: dict[str, subprocess.Popen[bytes]] = {}

    # -- configs -------------------------------------------------------------------

    def configs(self) -> dict[str, dict[str, Any]]:
        common = {"heartbeat_s": HEARTBEAT_S}
        edge_mqtt = self.edge.settings_for().as_table()
        loop = not self.args.until_eof
        detector: dict[str, Any] = {
            **common,
            "node": EDGE_NODE,
            "mqtt": edge_mqtt,
            "camera": {"source": self.args.source, "loop": loop, "realtime": loop},
            "detection": {"backend": self.detection.backend, "model": self.detection.model},
            "publish": {"mode": self.args.mode, "encoding": self.args.encoding},
            "journal": {"path": str(self.workdir / "detector" / "journal")},
        }
        for section, values in self.overrides.items():
            detector.setdefault(section, {}).update(values)
        return {
            "processor": {
                **common,
                "node": CLOUD_NODE,
                "mqtt": self.cloud.settings_for(CLOUD_NODE).as_table(),
                "storage": {"kind": "filesystem", "path": str(self.storage)},
            },
            "forwarder": {
                **common,
                "node": EDGE_NODE,
                "edge": edge_mqtt,
                "cloud": self.cloud.settings_for(EDGE_NODE).as_table(reconnect_max_s=5),
                "spool": {"path": str(self.workdir / "forwarder" / "spool.sqlite")},
            },
            "logger": {
                **common,
                "node": EDGE_NODE,
                "mqtt": edge_mqtt,
                "audit": {"path": str(self.workdir / "audit.jsonl"), "stderr": False},
            },
            "detector": detector,
        }

    # -- processes -----------------------------------------------------------------

    def start_service(self, name: str, config: dict[str, Any]) -> None:
        path = self.workdir / f"{name}.toml"
        path.write_text(dump_toml(config))
        check = subprocess.run(
            [sys.executable, "-m", "facefleet", name, "--check", "--config", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            said = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "rejected"
            raise ConfigError(f"{name}: {said.removeprefix(f'facefleet {name}: config error: ')}")
        with open(self.workdir / f"{name}.log", "ab") as logfile:
            self.services[name] = subprocess.Popen(
                [sys.executable, "-m", "facefleet", name, "--config", str(path)],
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,
            )

    def wait_online(self, board: StatusWatch, node: str, service: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not board.online(node, service):
            process = self.services[service]
            if process.poll() is not None:
                raise RuntimeError(
                    f"{service} exited with {process.returncode}: {self.log_tail(service)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{service} not online after {timeout_s:.0f}s: {self.log_tail(service)}"
                )
            time.sleep(0.1)

    def log_tail(self, service: str, lines: int = 5) -> str:
        path = self.workdir / f"{service}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop_services(self) -> None:
        for name in ("detector", "logger", "forwarder", "processor"):
            process = self.services.get(name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    log.warning("%s ignored SIGTERM; killing it", name)
                    process.kill()
                    process.wait()

    # -- progress and summary ------------------------------------------------------

    def progress(self, board: StatusWatch) -> str:
        det = board.figures(EDGE_NODE, "detector", DetectorFigures)
        fwd = board.figures(EDGE_NODE, "forwarder", ForwarderFigures)
        pro = board.figures(CLOUD_NODE, "processor", ProcessorFigures)
        return (
            f"frames {det.frames or 0}  fps {det.fps or 0:.1f}  "
            f"faces {det.faces_detected or 0}  published {det.published or 0}  "
            f"spooled {fwd.spool_depth or 0}  forwarded {fwd.forwarded_faces or 0}  "
            f"stored {pro.stored or 0}  dead-lettered {pro.dead_lettered or 0}"
        )

    def camera_trouble(self, board: StatusWatch) -> str:
        """The detector's reason for having no frames ("" while it has them)."""
        det = board.figures(EDGE_NODE, "detector", DetectorFigures)
        return (det.camera_error or "") if det.camera != "open" else ""

    def drained(self, board: StatusWatch) -> bool:
        """The detector stopped and everything it published is accounted for in storage (a
        figure not reported yet counts as not drained)."""
        detector = board.status(EDGE_NODE, "detector")
        fwd = board.figures(EDGE_NODE, "forwarder", ForwarderFigures)
        pro = board.figures(CLOUD_NODE, "processor", ProcessorFigures)
        if detector is None or detector.state != "stopped":
            return False
        det = board.figures(EDGE_NODE, "detector", DetectorFigures)
        accounted = (pro.stored or 0) + (pro.duplicates or 0) + (pro.dead_lettered or 0)
        return (
            fwd.spool_depth == 0
            and fwd.inflight == 0
            and accounted >= (det.published or 0)
            and pro.inflight == 0
        )

    def summary(self, board: StatusWatch, started: float, drained: bool) -> dict[str, Any]:
        det = board.figures(EDGE_NODE, "detector", DetectorFigures)
        fwd = board.figures(EDGE_NODE, "forwarder", ForwarderFigures)
        pro = board.figures(CLOUD_NODE, "processor", ProcessorFigures)
        return {
            "source": self.args.source,
            "mode": self.args.mode,
            "encoding": self.args.encoding,
            "backend": self.detection.backend,
            "frames": det.frames or 0,
            "fps": det.fps or 0,
            "faces_detected": det.faces_detected or 0,
            # persons the quality gate never published (per reason), and tracks it joined
            "held_back": det.held_back or {},
            "merged": det.merged or 0,
            "published": det.published or 0,
            "published_bytes": det.published_bytes or 0,
            "uplink_messages": fwd.forwarded or 0,
            "uplink_bytes": fwd.uplink_bytes or 0,
            "uplink_face_bytes": fwd.uplink_face_bytes or 0,
            "spool_dropped": fwd.dropped or 0,
            "stored": pro.stored or 0,
            "duplicates": pro.duplicates or 0,
            "dead_lettered": pro.dead_lettered or 0,
            "drained": drained,
            "wall_s": round(time.monotonic() - started, 1),
            "storage": str(self.storage),
        }

    # -- main ----------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        self.edge.start()
        self.cloud.start()
        board = StatusWatch(self.cloud.settings_for(MONITOR_IDENTITY)).start()
        drained = False
        try:
            configs = self.configs()
            print(
                f"facefleet demo: brokers edge {self.edge.address}, cloud {self.cloud.address} "
                f"(TLS); detector {self.detection.backend} on {self.args.source}; "
                f"faces into {self.storage}; work dir {self.workdir}",
                flush=True,
            )
            for name in ("processor", "forwarder", "logger"):
                self.start_service(name, configs[name])
            self.wait_online(board, CLOUD_NODE, "processor", 30)
            self.wait_online(board, EDGE_NODE, "forwarder", 30)
            self.wait_online(board, EDGE_NODE, "logger", 30)
            self.start_service("detector", configs["detector"])
            if self.args.headless:
                drained = self.watch(board, stop)
            else:
                self.run_monitor(stop)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop_services()
            time.sleep(HEARTBEAT_S * 1.5)  # let the final `stopped` figures arrive
            result = self.summary(board, started, drained)
            board.close()
            self.edge.cleanup()
            self.cloud.cleanup()
            print(self.storage_note(), file=sys.stderr, flush=True)
            if self.args.keep:
                print(f"work directory kept: {self.workdir}", flush=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        print(json.dumps(result), flush=True)
        return 0 if drained or not self.args.until_eof else 1

    def watch(self, board: StatusWatch, stop: threading.Event) -> bool:
        """Progress lines until ^C, or with --until-eof until the source ended and drained.

        While the source does not open, the progress line is replaced by the detector's reason
        (once per change); --until-eof gives up after --open-timeout without a frame."""
        deadline: float | None = None
        started = time.monotonic()
        said = ""
        while not stop.wait(2.0):
            trouble = self.camera_trouble(board)
            if trouble and trouble != said:
                print(f"source {self.args.source}: {trouble} (the detector retries)", flush=True)
            elif not trouble:
                print(self.progress(board), flush=True)
            said = trouble
            detector = self.services["detector"]
            if detector.poll() is not None and detector.returncode != 0:
                raise RuntimeError(f"detector failed: {self.log_tail('detector')}")
            if not self.args.until_eof:
                continue
            never_opened = not board.figures(EDGE_NODE, "detector", DetectorFigures).frames
            if never_opened and time.monotonic() - started > self.args.open_timeout:
                reason = trouble or "no frames"
                print(
                    f"facefleet demo: source {self.args.source} gave no frame in "
                    f"{self.args.open_timeout:.0f} s: {reason}",
                    file=sys.stderr,
                    flush=True,
                )
                return False
            if detector.poll() is not None:
                deadline = deadline or time.monotonic() + self.args.timeout
                if self.drained(board):
                    print("source ended and everything is stored", flush=True)
                    return True
                if time.monotonic() > deadline:
                    print(
                        f"gave up waiting for the drain after {self.args.timeout:.0f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                    return False
        return False

    def storage_note(self) -> str:
        """What the demo leaves behind: the storage grows across runs unless --fresh."""
        if not self.storage.is_dir():
            return f"storage {self.storage}: nothing stored"
        files = [p for p in self.storage.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        return (
            f"storage {self.storage}: {len(files)} files, {size / 1e6:.1f} MB, kept across "
            "runs (--fresh empties it first)"
        )

    def run_monitor(self, stop: threading.Event) -> None:
        settings = self.cloud.settings_for(MONITOR_IDENTITY)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "facefleet",
                "monitor",
                "--broker",
                settings.address,
                "--ca",
                settings.ca_file,
                "--cert",
                settings.cert_file,
                "--key",
                settings.key_file,
                *[arg for note in self.notes for arg in ("--note", note)],
            ],
            check=False,
        )


def run_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return Demo(args).run()
    except RuntimeError as exc:
        print(f"facefleet demo: {exc}", file=sys.stderr)
        return 1
