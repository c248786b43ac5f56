"""Jetson-like arm64 edges in the lab (issue #13), emulated with qemu-user.

jetson-1 runs Debian 11 (Python 3.9, the closest to JetPack 5 reachable here) with the pip
OpenCV wheel; jetson-cv-1 runs Debian 12 arm64 with Debian's python3-opencv 4.6, the way a
JetPack image brings its own OpenCV (`detector_opencv: system`). They join the running lab
the way an operator adds devices to a deployed fleet: booted beside the first suites, then
site.yml limited to them, from the per-platform wheelhouses with no registry reachable from
the hosts, and a second run that must change nothing; from here on they are hosts of the lab
(the rollout and rollback over them are in test_rollout.py). Emulated hosts are several times
slower: the waits here have room, and their figures go to build/fleet-report.json apart from
the others'.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from lab.inventory import CLIP, LAB_BUCKET

from facefleet.shared import YUNET_MODEL
from tests.fleet.clients import lab_s3, stored_faces
from tests.fleet.fleetlab import (
    EDGE_UNITS,
    INVENTORY,
    PUBLISHER_DIR,
    Lab,
    deploy,
    start_publishers,
    stop_publishers,
)
from tests.helpers import fleet_status, require_shared
from tests.support import wait_until

pytestmark = [pytest.mark.fleet, pytest.mark.slow, pytest.mark.timeout(3600)]
#: conftest.py's `known_state` waits for the arm64 edges to join the lab before this suite.
WITH_THE_ARM64_EDGES = True

ARM64 = "jetson-1"
SYSTEM_OPENCV = "jetson-cv-1"
PYTHON = "/opt/facefleet/current/venv/bin/python"


def node_report(node: str) -> dict[str, object]:
    result = fleet_status(INVENTORY, "--json", "--limit", node, "--wait", "300")
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = json.loads(result.stdout)["nodes"]
    return dict(report)


def test_site_yml_deploys_the_arm64_edges_and_a_second_run_changes_nothing(lab: Lab) -> None:
    joined = lab.arm64
    assert joined is not None, "the arm64 edges did not join the lab"
    assert joined.names == [ARM64, SYSTEM_OPENCV]
    assert joined.deploys, "the arm64 edges were not deployed: the lab's first deploy failed"
    first = joined.deploys[0]
    assert first.returncode == 0, first.tail()
    assert set(first.recap()) == set(joined.names), first.tail()
    assert len(joined.deploys) == 2
    joined.deploys[1].assert_changed_nothing(joined.names)
    assert {ARM64, SYSTEM_OPENCV} <= set(lab.edges), lab.edges
    lab.report["arm64_deploy_s"] = [round(d.seconds, 1) for d in joined.deploys]


def test_the_arm64_edge_is_aarch64_with_its_services_on_python_39(lab: Lab) -> None:
    assert lab.out(ARM64, "uname -m") == "aarch64"
    assert lab.out(ARM64, f"{PYTHON} -c 'import platform; print(platform.python_version())'")[
        :4
    ] == ("3.9.")
    lab.wait_active(ARM64, *EDGE_UNITS, timeout_s=300)
    report = node_report(ARM64)
    assert report["healthy"] is True, report
    platform = str(report["platform"])
    assert platform.startswith("aarch64, Debian GNU/Linux 11"), platform
    assert "Python 3.9." in platform and "OpenCV 4." in platform, platform
    services = report["services"]
    assert isinstance(services, dict)
    for service in ("detector", "logger", "forwarder"):
        assert services[service]["platform"]["python"].startswith("3.9."), services[service]
    lab.report["arm64"] = {"platform": platform}


def test_the_arm64_wheelhouse_holds_only_wheels_it_can_install(lab: Lab) -> None:
    wheels = lab.out(ARM64, "ls /opt/facefleet/wheelhouse/*/").split()
    binary = [w for w in wheels if w.endswith(".whl") and not w.endswith("-none-any.whl")]
    assert binary, wheels
    assert all("aarch64" in w and ("cp39" in w or "abi3" in w) for w in binary), binary
    assert not any("x86_64" in w for w in wheels), wheels


def test_faces_published_on_the_arm64_edge_are_stored_exactly_once(lab: Lab) -> None:
    start_publishers(lab, [ARM64], PYTHON)
    try:
        wait_until(
            lambda: int(lab.out(ARM64, f"cat {PUBLISHER_DIR}/acked.txt 2>/dev/null | wc -l")) >= 20,
            180,
            f"20 faces acknowledged by the edge broker of {ARM64}",
        )
    finally:
        published, logs = stop_publishers(lab, [ARM64])
    ids = set(published[ARM64])
    assert len(ids) >= 10, logs
    s3 = lab_s3(lab)
    started = time.monotonic()

    def all_stored() -> dict[str, list[str]] | None:
        found = stored_faces(s3, ARM64)
        return found if ids <= set(found) else None

    stored = wait_until(all_stored, 300, f"the {len(ids)} faces published on {ARM64} stored")
    lab.report["arm64"] = {
        **lab.report.get("arm64", {}),
        "faces_published": len(ids),
        "all_stored_after_s": round(time.monotonic() - started, 1),
    }
    assert all(len(stored[face_id]) == 1 for face_id in ids), "a face was stored twice"
    head = s3.head_object(Bucket=LAB_BUCKET, Key=stored[sorted(ids)[0]][0])
    assert head["Metadata"]["node"] == ARM64
    assert head["Metadata"]["sha256"] and head["Metadata"]["ts"]


#: YuNet on frames of the lab's clip (640x360) where faces are, one thread, timed in CPU
#: seconds (the machine is shared).
FPS_PROBE = f"""
import time, cv2
cv2.setNumThreads(1)
capture = cv2.VideoCapture("/opt/facefleet/media/{CLIP}")
capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
yunet = cv2.FaceDetectorYN.create("/opt/facefleet/models/{YUNET_MODEL}", "", (0, 0))
frames, faces, began = 0, 0, time.process_time()
while frames < 5:
    ok, frame = capture.read()
    if not ok:
        break
    yunet.setInputSize((frame.shape[1], frame.shape[0]))
    _, found = yunet.detect(frame)
    faces += 0 if found is None else len(found)
    frames += 1
print(frames, faces, time.process_time() - began)
"""


def test_the_detectors_frame_rate_under_emulation_is_recorded(lab: Lab) -> None:
    """For the record only (no target applies to emulated hosts): how many frames of the
    clip one emulated core runs YuNet on per CPU-second."""
    require_shared("models", YUNET_MODEL)
    out = lab.out(ARM64, f"{PYTHON} - <<'EOF'\n{FPS_PROBE}\nEOF")
    frames, faces, cpu_s = out.split()
    assert int(frames) == 5 and int(faces) > 0, out
    lab.report["arm64"] = {
        **lab.report.get("arm64", {}),
        "yunet_fps_per_cpu_s": round(int(frames) / float(cpu_s), 3),
    }


def test_the_detector_runs_on_the_distributions_opencv(lab: Lab) -> None:
    lab.wait_active(SYSTEM_OPENCV, *EDGE_UNITS, timeout_s=300)
    venv = "/opt/facefleet/current/venv-system-site/bin/python"
    where = lab.out(SYSTEM_OPENCV, f"{venv} -c 'import cv2; print(cv2.__version__, cv2.__file__)'")
    assert where.startswith("4.6.") and "/usr/lib/python3/dist-packages/" in where, where
    report = node_report(SYSTEM_OPENCV)
    assert report["healthy"] is True, report
    assert "OpenCV 4.6." in str(report["platform"]), report["platform"]
    lab.report["arm64_system_opencv"] = {"platform": report["platform"]}


def test_a_model_the_distributions_opencv_cannot_run_stops_the_deploy_before_any_change(
    lab: Lab,
) -> None:
    model = require_shared("models", YUNET_MODEL)
    fingerprint = (
        "readlink /opt/facefleet/current; md5sum /opt/facefleet/current/config/*.toml"
        " /etc/systemd/system/facefleet-*.service"
    )
    before = lab.out(SYSTEM_OPENCV, fingerprint)
    result = deploy(
        lab.source,
        "--limit",
        SYSTEM_OPENCV,
        detector_backend="yunet",
        detector_model_src=str(Path(model)),
    )
    assert result.returncode != 0, result.tail()
    lines = [line for line in result.output.splitlines() if "cannot run this YuNet model" in line]
    assert lines, result.tail(80)
    assert "OpenCV 4.6." in lines[0] and "needs OpenCV 4.8" in lines[0], lines[0]
    assert "haar" in lines[0] and "detector_opencv: wheel" in lines[0], lines[0]
    assert lab.out(SYSTEM_OPENCV, fingerprint) == before
    assert lab.ssh(SYSTEM_OPENCV, "systemctl is-active facefleet-detector").returncode == 0


def test_a_host_that_cannot_run_private_user_namespaces_is_named_by_the_preflight(
    lab: Lab,
) -> None:
    """qemu-user cannot set up PrivateUsers= reliably (the lab turns it off for emulated
    hosts); asked for it anyway, the preflight stops with one line before anything changes."""
    result = deploy(
        lab.source,
        "--limit",
        ARM64,
        playbook="playbooks/validate.yml",
        facefleet_private_users=True,
    )
    assert result.returncode != 0, result.tail()
    lines = [line for line in result.output.splitlines() if "PrivateUsers=yes" in line]
    assert lines, result.tail(40)
    assert f"{ARM64}: systemd cannot run a service with PrivateUsers=yes" in lines[0], lines[0]
    assert "set facefleet_private_users: false for this host" in lines[0], lines[0]
