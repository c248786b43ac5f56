"""The processor's validation: every malformed message is rejected with a reason, never a crash."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facefleet.contract import ContractError, faces_topic
from facefleet.processor.settings import ValidationSettings
from facefleet.processor.validation import validate
from tests.support import face_meta, jpeg_bytes, png_bytes

LIMITS = ValidationSettings(max_bytes=200_000, max_pixels=1000 * 1000)
TOPIC = faces_topic("facefleet", "edge1")


def props_for(payload: bytes, **overrides: object) -> dict[str, str]:
    meta = face_meta("edge1", payload, **overrides)
    return dict(meta.user_properties())


def test_valid_jpeg_and_png_pass() -> None:
    jpeg = jpeg_bytes()
    meta = validate("facefleet", TOPIC, props_for(jpeg), "image/jpeg", jpeg, LIMITS)
    assert meta.node == "edge1"
    png = png_bytes()
    props = props_for(png, content_type="image/png")
    assert validate("facefleet", TOPIC, props, "image/png", png, LIMITS).extension == "png"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda p, pr: (
                p[: len(p) // 2],
                {**pr, "sha256": hashlib.sha256(p[: len(p) // 2]).hexdigest()},
            ),
            "truncated JPEG",
        ),
        (lambda p, pr: (p, {k: v for k, v in pr.items() if k != "ts"}), "missing properties: ts"),
        (lambda p, pr: (p, {**pr, "node": "edge2"}), "differs from the node property"),
        (lambda p, pr: (p, {**pr, "sha256": "0" * 64}), "sha256 does not match"),
        (lambda p, pr: (p, {**pr, "box": "1,2,3"}), "malformed box"),
        (lambda p, pr: (p, {**pr, "score": "1.5"}), "score out of range"),
        (lambda p, pr: (p, {**pr, "ts": "yesterday"}), "malformed ts"),
        (lambda p, pr: (p, {**pr, "v": "9"}), "unsupported schema version"),
        (lambda p, pr: (p, {**pr, "id": "../../etc"}), "malformed id"),
        (lambda p, pr: (b"x" * 300_000, pr), "exceeds"),
        (lambda p, pr: (b"", pr), "empty payload"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    payload = jpeg_bytes()
    payload, props = mutate(payload, props_for(payload))
    with pytest.raises(ContractError, match=reason):
        validate("facefleet", TOPIC, props, "image/jpeg", payload, LIMITS)


def test_wrong_content_type_and_wrong_topic() -> None:
    png = png_bytes()
    with pytest.raises(ContractError, match="not a JPEG"):
        validate("facefleet", TOPIC, props_for(png), "image/jpeg", png, LIMITS)
    jpeg = jpeg_bytes()
    with pytest.raises(ContractError, match="unsupported content type"):
        validate("facefleet", TOPIC, props_for(jpeg), "text/plain", jpeg, LIMITS)
    with pytest.raises(ContractError, match="not a faces topic"):
        validate("facefleet", "facefleet/edge1/other", props_for(jpeg), "image/jpeg", jpeg, LIMITS)


def test_a_face_under_a_name_that_is_not_a_device_is_rejected() -> None:
    jpeg = jpeg_bytes()
    limits = ValidationSettings(not_devices=("cloud-1", "monitor"))
    props = dict(face_meta("monitor", jpeg).user_properties())
    topic = faces_topic("facefleet", "monitor")
    with pytest.raises(ContractError, match="node 'monitor' is not a device"):
        validate("facefleet", topic, props, "image/jpeg", jpeg, limits)
    assert validate("facefleet", TOPIC, props_for(jpeg), "image/jpeg", jpeg, limits).node == "edge1"


def test_image_larger_than_the_pixel_limit_is_rejected() -> None:
    big = jpeg_bytes(width=1200, height=1000)
    limits = ValidationSettings(max_bytes=10_000_000, max_pixels=1000 * 1000)
    with pytest.raises(ContractError, match="outside the limit"):
        validate("facefleet", TOPIC, props_for(big), "image/jpeg", big, limits)


def test_jpeg_with_a_corrupt_body_is_rejected() -> None:
    payload = bytearray(jpeg_bytes())
    payload[200:260] = b"\xff" * 60  # markers where entropy-coded data should be
    data = bytes(payload)
    with pytest.raises(ContractError):
        validate("facefleet", TOPIC, props_for(data), "image/jpeg", data, LIMITS)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=4096),
    props=st.dictionaries(
        st.sampled_from(
            ["v", "id", "node", "track", "ts", "box", "score", "frame", "detector", "sha256", "x"]
        ),
        st.text(max_size=40),
    ),
    ctype=st.one_of(st.none(), st.sampled_from(["image/jpeg", "image/png", "a/b"])),
)
def test_random_input_never_escapes_as_anything_but_contract_error(
    payload: bytes, props: dict[str, str], ctype: str | None
) -> None:
    with contextlib.suppress(ContractError):  # anything else fails the test
        validate("facefleet", TOPIC, props, ctype, payload, LIMITS)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=1, max_value=2000), flip=st.integers(min_value=0, max_value=255))
def test_damaged_real_jpegs_never_crash_validation(cut: int, flip: int) -> None:
    data = bytearray(jpeg_bytes(seed=cut))
    data[cut % len(data)] ^= flip
    payload = bytes(data[: max(2, len(data) - cut)])
    props = props_for(payload)
    with contextlib.suppress(ContractError):  # anything else fails the test
        validate("facefleet", TOPIC, props, "image/jpeg", payload, LIMITS)
