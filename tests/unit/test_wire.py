"""facefleet.wire against paho-mqtt's own PUBLISH codec: the same packets, objects and bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facefleet import wire

V5 = MQTTProtocolVersion.MQTTv5
paho_decode = wire._paho_decode_publish

# MQTT strings: no NUL, no U+FEFF, no surrogates (the fast path hands those to paho)
mqtt_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\ufeff"), max_size=40
)
publish_values = st.fixed_dictionaries(
    {},
    optional={
        "PayloadFormatIndicator": st.integers(0, 1),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": mqtt_text,
        "ResponseTopic": mqtt_text,
        "CorrelationData": st.binary(max_size=40),
        "SubscriptionIdentifier": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3),
        "TopicAlias": st.integers(1, 65535),
        "UserProperty": st.lists(st.tuples(mqtt_text, mqtt_text), min_size=1, max_size=15),
    },
)


def paho_properties(values: dict[str, Any]) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        if name in wire.MULTIPLE:
            for item in value:
                setattr(props, name, item)
        else:
            setattr(props, name, value)
    return props


def attributes(props: Properties | None) -> dict[str, Any]:
    assert props is not None
    return {k: v for k, v in vars(props).items() if k not in wire._TEMPLATE and k != "_packed"}


def publish_packet(topic: bytes, qos: int, mid: int, packed_props: bytes, payload: bytes) -> bytes:
    head = struct.pack("!H", len(topic)) + topic
    return head + (struct.pack("!H", mid) if qos else b"") + packed_props + payload


def decode_both(header: int, packet: bytes) -> tuple[Any, Any]:
    """(fast, paho) results, an exception type standing for a refused packet."""
    results: list[Any] = []
    for decode in (wire.decode_publish, paho_decode):
        try:
            results.append(decode(header, packet, V5))
        except MalformedPacket:
            results.append(MalformedPacket)
    return results[0], results[1]


def assert_same(fast: Any, paho: Any) -> None:
    if paho is MalformedPacket or fast is MalformedPacket:
        assert fast is paho
        return
    assert fast._replace(properties=None) == paho._replace(properties=None)
    assert type(fast.properties) is Properties
    assert attributes(fast.properties) == attributes(paho.properties)


@settings(max_examples=300, deadline=None)
@given(
    values=publish_values,
    topic=mqtt_text.map(str.encode),
    flags=st.integers(0, 15),
    mid=st.integers(1, 65535),
    payload=st.binary(max_size=2000),
)
def test_decodes_every_valid_publish_as_paho_does(
    values: dict[str, Any], topic: bytes, flags: int, mid: int, payload: bytes
) -> None:
    header = 0x30 | flags
    qos = (flags >> 1) & 3
    packet = publish_packet(topic, qos, mid, paho_properties(values).pack(), payload)  # type: ignore[no-untyped-call]
    fast, paho = decode_both(header, packet)
    assert paho is not MalformedPacket
    assert_same(fast, paho)
    assert fast.payload == payload


@settings(max_examples=300, deadline=None)
@given(
    values=publish_values,
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
def test_damaged_packets_are_refused_or_read_exactly_as_paho_does(
    values: dict[str, Any], cut: int, flips: list[tuple[int, int]]
) -> None:
    packed = paho_properties(values).pack()  # type: ignore[no-untyped-call]
    packet = bytearray(publish_packet(b"facefleet/e/faces", 1, 7, packed, b"payload"))
    for at, byte in flips:
        if at < len(packet):
            packet[at] = byte
    assert_same(*decode_both(0x32, bytes(packet[: max(0, len(packet) - cut)])))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), header=st.integers(0x30, 0x3F))
def test_random_bytes_are_refused_or_read_exactly_as_paho_does(data: bytes, header: int) -> None:
    assert_same(*decode_both(header, data))


@pytest.mark.parametrize(
    "values",
    [
        {"PayloadFormatIndicator": 2},  # only 0 or 1
        {"TopicAlias": 0},  # 1..65535
        {"UserProperty": [("a", "b\x00c")]},  # NUL in a string
        {"ContentType": "\ufefftext"},  # U+FEFF in a string
    ],
)
def test_values_paho_refuses_are_refused(values: dict[str, Any]) -> None:
    packet = publish_packet(b"t", 1, 1, wire.encode_properties(values), b"x")
    assert decode_both(0x32, packet) == (MalformedPacket, MalformedPacket)


def test_a_property_publish_may_not_carry_goes_to_paho() -> None:
    session_expiry = bytes([17]) + struct.pack("!L", 60)  # a CONNECT property
    packet = publish_packet(b"t", 1, 1, bytes([len(session_expiry)]) + session_expiry, b"x")
    assert decode_both(0x32, packet) == (MalformedPacket, MalformedPacket)


@settings(max_examples=300, deadline=None)
@given(values=publish_values)
def test_packed_properties_encode_as_paho_and_read_like_paho_objects(
    values: dict[str, Any],
) -> None:
    expected = paho_properties(values)
    packed = wire.PackedProperties(values)
    assert packed.pack() == expected.pack()  # type: ignore[no-untyped-call]
    assert attributes(packed) == attributes(expected)
    assert str(packed) == str(expected)


def test_changing_packed_properties_encodes_them_again() -> None:
    packed = wire.PackedProperties({"UserProperty": [("id", "1")]})
    packed.ContentType = "image/jpeg"
    packed.UserProperty = ("node", "edge-1")
    expected = paho_properties(
        {"ContentType": "image/jpeg", "UserProperty": [("id", "1"), ("node", "edge-1")]}
    )
    assert packed.pack() == expected.pack()  # type: ignore[no-untyped-call]


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="SessionExpiryInterval"):
        wire.PackedProperties({"SessionExpiryInterval": 60})


def test_install_routes_paho_clients_through_the_fast_decoder() -> None:
    assert wire.install()
    assert _packet.decode_publish is wire.decode_publish
    assert wire.install()  # idempotent
