"""Clients of the lab's cloud side for the fleet tests: MQTT settings of a fleet identity, S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from lab.inventory import LAB_BUCKET, LAB_S3_KEY_ID, LAB_S3_PORT, LAB_S3_SECRET

from facefleet.mqtt import MqttSettings
from tests.fleet.fleetlab import PKI_DIR, Lab

BROKER_PORT = 8883


def cloud_settings(lab: Lab, identity: str) -> MqttSettings:
    return broker_settings(lab.hosts[lab.cloud], PKI_DIR, identity)


def broker_settings(address: str, pki_dir: Path, identity: str) -> MqttSettings:
    """`identity` of the PKI in `pki_dir` on the broker at `address` (TLS, port 8883)."""
    return MqttSettings(
        host=address,
        port=BROKER_PORT,
        tls=True,
        ca_file=str(pki_dir / "ca.crt"),
        cert_file=str(pki_dir / f"{identity}.crt"),
        key_file=str(pki_dir / f"{identity}.key"),
    )


def lab_s3(lab: Lab) -> Any:
    """boto3 S3 client of the lab's S3 endpoint on the cloud host."""
    return s3_at(lab.hosts[lab.cloud])


def s3_at(address: str) -> Any:
    """boto3 S3 client of a lab S3 endpoint (roles/lab_s3) on the host at `address`."""
    return boto3.client(
        "s3",
        endpoint_url=f"http://{address}:{LAB_S3_PORT}",
        aws_access_key_id=LAB_S3_KEY_ID,
        aws_secret_access_key=LAB_S3_SECRET,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=20),
    )


def stored_faces(s3: Any, node: str) -> dict[str, list[str]]:
    """Face id -> the keys holding it, under faces/<node>/ of the lab bucket."""
    keys: dict[str, list[str]] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=LAB_BUCKET, Prefix=f"faces/{node}/")
    for page in pages:
        for obj in page.get("Contents", []):
            face_id = obj["Key"].rsplit("_", 1)[1].split(".")[0]
            keys.setdefault(face_id, []).append(obj["Key"])
    return keys
