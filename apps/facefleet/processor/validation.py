"""Validation of a face message at the processor: pure functions, no broker, no storage.

A message is stored only when its topic, properties and payload all agree with the contract
and the payload really is a complete image of the declared type within the size limits;
otherwise ContractError carries the reason that goes with it to the dead-letter place.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from facefleet.contract import ContractError, FaceMeta, parse_face_properties, parse_topic
from facefleet.processor.settings import ValidationSettings

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Start-of-frame markers that carry the image size (all SOFn except DHT, JPG and DAC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(payload: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF segment; ContractError if there is none."""
    pos = 2
    while pos + 4 <= len(payload):
        if payload[pos] != 0xFF:
            raise ContractError("malformed JPEG: bad segment marker")
        marker = payload[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", payload[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(payload):
                break
            height, width = struct.unpack(">HH", payload[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ContractError("malformed JPEG: no frame header")


def png_size(payload: bytes) -> tuple[int, int]:
    if len(payload) < 24 or payload[12:16] != b"IHDR":
        raise ContractError("malformed PNG: no IHDR chunk")
    width, height = struct.unpack(">II", payload[16:24])
    return width, height


def check_image(payload: bytes, content_type: str, limits: ValidationSettings) -> tuple[int, int]:
    """The image's (width, height) if the payload is a complete image of `content_type`."""
    if content_type == "image/jpeg":
        if not payload.startswith(_JPEG_SOI):
            raise ContractError("payload is not a JPEG (content type image/jpeg)")
        if not payload.rstrip(b"\x00").endswith(_JPEG_EOI):
            raise ContractError("truncated JPEG: no end-of-image marker")
        width, height = jpeg_size(payload)
    else:
        if not payload.startswith(_PNG_SIGNATURE):
            raise ContractError("payload is not a PNG (content type image/png)")
        if not payload.endswith(_PNG_IEND):
            raise ContractError("truncated PNG: no IEND chunk")
        width, height = png_size(payload)
    if width <= 0 or height <= 0 or width * height > limits.max_pixels:
        raise ContractError(f"image size {width}x{height} outside the limit")
    image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ContractError(f"payload does not decode as {content_type}")
    if (image.shape[1], image.shape[0]) != (width, height):
        raise ContractError("decoded size differs from the header")
    return width, height


def validate(
    prefix: str,
    topic: str,
    properties: dict[str, str],
    content_type: str | None,
    payload: bytes,
    limits: ValidationSettings,
) -> FaceMeta:
    """The FaceMeta of a valid face message; ContractError with the reason otherwise."""
    parsed = parse_topic(prefix, topic)
    if parsed is None or parsed[1] != "faces":
        raise ContractError(f"not a faces topic: {topic!r}")
    if parsed[0] in limits.not_devices:
        raise ContractError(f"node {parsed[0]!r} is not a device")
    if not payload:
        raise ContractError("empty payload")
    if len(payload) > limits.max_bytes:
        raise ContractError(f"payload of {len(payload)} bytes exceeds {limits.max_bytes}")
    meta = parse_face_properties(properties, content_type, payload)
    if meta.node != parsed[0]:
        raise ContractError(
            f"topic node {parsed[0]!r} differs from the node property {meta.node!r}"
        )
    check_image(payload, meta.content_type, limits)
    return meta
