"""No window on the device: kill -9 the edge broker, the forwarder and the detector at seeded
random instants while faces flow; every face in the detector's own record is stored once.

Real processes throughout: edge mosquitto, detector (synthetic scene, every-frame faces),
forwarder, cloud mosquitto (TLS), processor into a directory. FACEFLEET_FAULT_JOURNAL_KILLS
sets the kills per victim (default 3, about 30 s); FACEFLEET_FAULT_JOURNAL_SEED replays a run
(the seed is printed, and named in a failure).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from facefleet.contract import parse_storage_key
from facefleet.detector.journal import read_record, reconcile
from facefleet.localbroker import LocalBroker
from tests.pipeline.relay import (
    CLOUD_NODE,
    EDGE_NODE,
    forwarder_config,
    mqtt_table,
    wait_online,
)
from tests.support import Collector, ServiceProcess, seeded_faults, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

KILLS = int(os.environ.get("FACEFLEET_FAULT_JOURNAL_KILLS", "3"))
SCENE = "synthetic:?persons=2&seconds=30&fps=8&seed=5"


def detector_config(edge: LocalBroker, journal: Path, source: str) -> dict[str, Any]:
    return {
        "node": EDGE_NODE,
        "heartbeat_s": 0.5,
        "mqtt": {**mqtt_table(edge), "reconnect_min_s": 1, "reconnect_max_s": 1},
        "camera": {"source": source, "realtime": True, "loop": True, "reopen_max_s": 1.0},
        "detection": {"backend": "haar"},
        "publish": {"mode": "every-frame"},
        "journal": {"path": str(journal), "confirm_timeout_s": 3},
    }


def stored_ids(store: Path) -> Counter[str]:
    keys = (parse_storage_key(p.relative_to(store).as_posix()) for p in store.rglob("*.jpg"))
    return Counter(key.id for key in keys if key is not None)


def test_every_recorded_face_is_stored_once_across_kill_9s(tmp_path: Path) -> None:
    seed, rng, victims = seeded_faults(
        "FACEFLEET_FAULT_JOURNAL_SEED", dict.fromkeys(("broker", "forwarder", "detector"), KILLS)
    )
    print(f"journal kill test: seed {seed}, {KILLS} kills each of broker, forwarder, detector")
    journal, store = tmp_path / "journal", tmp_path / "store"
    edge = LocalBroker("edge", workdir=tmp_path / "edge").start()
    cloud = LocalBroker("cloud", workdir=tmp_path / "cloud", processors=(CLOUD_NODE,)).start()
    processor = ServiceProcess(
        "processor",
        {
            "node": CLOUD_NODE,
            "heartbeat_s": 1.0,
            "mqtt": {**mqtt_table(cloud, CLOUD_NODE), "reconnect_max_s": 2},
            "storage": {"kind": "filesystem", "path": str(store)},
        },
        tmp_path / "processor",
    )
    forwarder_cfg = forwarder_config(edge, cloud, tmp_path / "spool" / "spool.sqlite")
    forwarder_cfg["edge"] = {
        **forwarder_cfg["edge"],
        "reconnect_min_s": 1,
        "reconnect_max_s": 1,
    }
    forwarder = ServiceProcess("forwarder", forwarder_cfg, tmp_path / "forwarder")
    detector = ServiceProcess(
        "detector", detector_config(edge, journal, SCENE), tmp_path / "detector"
    )
    services = [processor, forwarder, detector]
    try:
        processor.start()
        forwarder.start()
        wait_online(cloud, "processor")
        wait_online(edge, "forwarder")
        detector.start()
        wait_until(lambda: read_record(journal), 30, "the detector's first faces")

        for victim in victims:
            time.sleep(rng.uniform(0.3, 2.0))
            if victim == "broker":
                edge.kill()
                edge.stop()
                time.sleep(rng.uniform(0.0, 0.5))
                edge.start()
            else:
                service = forwarder if victim == "forwarder" else detector
                service.kill()
                time.sleep(rng.uniform(0.0, 0.5))
                service.start()
        time.sleep(1.0)

        # the last run of the detector has no camera: it only replays what is unconfirmed
        wait_online(edge, "detector", live=True)  # past its start-up, so SIGTERM is handled
        detector.stop()
        assert detector.process is not None and detector.process.returncode == 0, detector.log()
        replayer = ServiceProcess(
            "detector",
            detector_config(edge, journal, "/dev/video-facefleet-none"),
            tmp_path / "detector",
            name="replayer",
        )
        services.append(replayer)
        replayer.start()
        record = read_record(journal)
        assert record and all(entry.journaled for entry in record)
        watcher = Collector(edge.settings_for(), f"facefleet/{EDGE_NODE}/status/detector")

        def settled() -> bool:
            beats = [json.loads(m.payload) for m in watcher.snapshot() if not m.retain]
            idle = bool(beats) and beats[-1].get("journal_pending") == 0
            return idle and set(stored_ids(store)) >= {entry.id for entry in record}

        try:
            wait_until(settled, 90, "every recorded face stored and the journal empty")
        except TimeoutError:
            result = reconcile(record, list(stored_ids(store).elements()))
            raise AssertionError(
                f"seed {seed}: {len(result.missing)} of {result.published} recorded faces not"
                f" stored\nforwarder log:\n{forwarder.log()[-2000:]}"
            ) from None
        finally:
            watcher.close()
        stored = stored_ids(store)
        result = reconcile(record, list(stored.elements()))
        assert result.ok, f"seed {seed}: {result}"
        assert set(stored) == {entry.id for entry in record}, f"seed {seed}: unrecorded faces"
        print(
            f"journal kill test: {result.published} faces recorded, each stored once;"
            f" {len(victims)} kills"
        )
    finally:
        for service in services:
            if service.alive():
                service.stop()
        edge.cleanup()
        cloud.cleanup()
