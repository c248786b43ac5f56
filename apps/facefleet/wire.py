"""MQTT v5 PUBLISH properties on the wire, without paho-mqtt's per-byte cost.

paho-mqtt 2.x decodes a received PUBLISH's properties in pure Python: it slices the rest of
the packet (the payload included) for every field of every property and checks every
character of every string in a Python loop. A face with its dozen user properties costs
about 265 us to decode that way (30 % of the forwarder's interpreter time), and every service
that receives faces pays it. Encoding builds a `Properties` object whose
attribute checks and `pack()` walk paho's 27-entry name table for every field (about 70 us).

This module reads the properties a PUBLISH may carry (MQTT v5.0 section 3.3.2.3) by offsets
into the packet and encodes them in one pass, producing the same `Properties` objects and the
same bytes paho does (`tests/unit/test_wire.py` checks both against paho on random packets).
A packet it does not fully recognise (a malformed one, a property value paho would refuse)
goes to paho's own decoder, which raises its own error: the fast path never accepts what
paho rejects.

`install()` (called by `facefleet.mqtt.make_client`) routes paho's PUBLISH decoding here for
the paho versions it was checked against; with any other version paho is left alone.
"""

from __future__ import annotations

import importlib.metadata
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

#: paho-mqtt versions whose PUBLISH decoding (`_packet.decode_publish`, `PublishPacket`) and
#: `Properties` internals this module was checked against.
CHECKED_PAHO = ("2.1.", "2.2.")

BYTE, INT16, INT32, VBI, BINARY, UTF8, PAIR = range(7)

#: The properties a PUBLISH may carry: identifier -> (paho attribute, wire type). Encoding
#: follows this order, which is paho's (its name table is ordered by identifier).
PUBLISH_PROPERTIES: dict[int, tuple[str, int]] = {
    1: ("PayloadFormatIndicator", BYTE),
    2: ("MessageExpiryInterval", INT32),
    3: ("ContentType", UTF8),
    8: ("ResponseTopic", UTF8),
    9: ("CorrelationData", BINARY),
    11: ("SubscriptionIdentifier", VBI),
    35: ("TopicAlias", INT16),
    38: ("UserProperty", PAIR),
}
_BY_NAME = {name: (ident, kind) for ident, (name, kind) in PUBLISH_PROPERTIES.items()}
#: Properties that may occur more than once (their attribute is a list).
MULTIPLE = frozenset({"SubscriptionIdentifier", "UserProperty"})

#: paho's own tables (`packetType`, `types`, `names`, `properties`), shared by every object
#: made here: paho only reads them.
_TEMPLATE = dict(vars(Properties(PacketTypes.PUBLISH)))  # type: ignore[no-untyped-call]
_INT16 = struct.Struct("!H")
_INT32 = struct.Struct("!L")
_paho_decode_publish: Callable[..., _packet.PublishPacket] = _packet.decode_publish


class _Unrecognised(Exception):
    """Not for the fast path: paho decodes this packet (or raises its error)."""


def _vbi(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 4, end)):
        digit = data[i]
        value += (digit & 0x7F) << shift
        if not digit & 0x80:
            return value, i + 1
        shift += 7
    raise _Unrecognised


def _length_prefixed(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise _Unrecognised
    start = pos + 2
    stop = start + _INT16.unpack_from(data, pos)[0]
    if stop > end:
        raise _Unrecognised
    return data[start:stop], stop


def _utf8(data: bytes, pos: int, end: int) -> tuple[str, int]:
    raw, pos = _length_prefixed(data, pos, end)
    try:
        text = raw.decode("utf-8")  # refuses surrogates (D800-DFFF), as MQTT does
    except UnicodeDecodeError:
        raise _Unrecognised from None
    if "\x00" in text or "\ufeff" in text:  # MQTT-1.5.4-2, -3
        raise _Unrecognised
    return text, pos


def decode_properties(data: bytes, pos: int, end: int) -> Properties:
    """The PUBLISH properties in `data[pos:end]` (after the property length)."""
    values: dict[str, Any] = {}
    while pos < end:
        ident, pos = _vbi(data, pos, end)
        spec = PUBLISH_PROPERTIES.get(ident)
        if spec is None:
            raise _Unrecognised
        name, kind = spec
        value: Any
        if kind == PAIR:
            key, pos = _utf8(data, pos, end)
            text, pos = _utf8(data, pos, end)
            value = (key, text)
        elif kind == UTF8:
            value, pos = _utf8(data, pos, end)
        elif kind == BINARY:
            value, pos = _length_prefixed(data, pos, end)
        elif kind == VBI:
            value, pos = _vbi(data, pos, end)
            if value < 1:
                raise _Unrecognised
        else:
            size = {BYTE: 1, INT16: 2, INT32: 4}[kind]
            if pos + size > end:
                raise _Unrecognised
            value = int.from_bytes(data[pos : pos + size], "big")
            pos += size
            if (name == "PayloadFormatIndicator" and value > 1) or (
                name == "TopicAlias" and value < 1
            ):
                raise _Unrecognised
        if name in MULTIPLE:
            values.setdefault(name, []).append(value)
        elif name in values:
            raise _Unrecognised  # a single-valued property twice
        else:
            values[name] = value
    if pos != end:
        raise _Unrecognised
    props = Properties.__new__(Properties)
    props.__dict__.update(_TEMPLATE)
    props.__dict__.update(values)
    return props


def decode_publish(
    header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion
) -> _packet.PublishPacket:
    """paho's `_packet.decode_publish`, fast for MQTT v5."""
    if protocol != MQTTProtocolVersion.MQTTv5:
        return _paho_decode_publish(header, packet, protocol)
    data = bytes(packet)
    try:
        end = len(data)
        if end < 2:
            raise _Unrecognised
        pos = 2 + _INT16.unpack_from(data, 0)[0]
        if pos > end:
            raise _Unrecognised
        topic = data[2:pos]
        qos = (header & 0x06) >> 1
        mid = 0
        if qos > 0:
            if pos + 2 > end:
                raise _Unrecognised
            mid = _INT16.unpack_from(data, pos)[0]
            pos += 2
        length, pos = _vbi(data, pos, end)
        if pos + length > end:
            raise _Unrecognised
        properties = decode_properties(data, pos, pos + length)
    except _Unrecognised:
        return _paho_decode_publish(header, packet, protocol)
    return _packet.PublishPacket(
        dup=bool(header & 0x08),
        qos=qos,
        retain=bool(header & 0x01),
        topic=topic,
        mid=mid,
        properties=properties,
        payload=data[pos + length :],
    )


def _encode_vbi(value: int) -> bytes:
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"Value {value!r} must be in range 0-268435455")
    out = bytearray()
    while True:
        digit, value = value & 0x7F, value >> 7
        out.append(digit | 0x80 if value else digit)
        if not value:
            return bytes(out)


def _encode_text(value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    return _INT16.pack(len(raw)) + raw


def encode_properties(values: Mapping[str, Any]) -> bytes:
    """PUBLISH properties (paho attribute names; lists for the multiple ones) as paho's
    `Properties.pack()` encodes them: the property length, then the properties."""
    parts: list[bytes] = []
    for ident, (name, kind) in PUBLISH_PROPERTIES.items():
        if name not in values:
            continue
        value = values[name]
        items: Sequence[Any] = value if name in MULTIPLE else [value]
        head = _encode_vbi(ident)
        for item in items:
            if kind == PAIR:
                parts.append(head + _encode_text(item[0]) + _encode_text(item[1]))
            elif kind == UTF8:
                parts.append(head + _encode_text(item))
            elif kind == BINARY:
                parts.append(head + _INT16.pack(len(item)) + bytes(item))
            elif kind == VBI:
                parts.append(head + _encode_vbi(item))
            elif kind == BYTE:
                parts.append(head + bytes([item]))
            elif kind == INT16:
                parts.append(head + _INT16.pack(item))
            else:
                parts.append(head + _INT32.pack(item))
    body = b"".join(parts)
    return _encode_vbi(len(body)) + body


class PackedProperties(Properties):
    """PUBLISH properties encoded once, when made: paho calls `pack()` on every (re)send.

    Made from paho attribute names (`UserProperty` a list of pairs); reading attributes
    works as on any `Properties`. Setting one afterwards goes through paho's checks and
    encodes again."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        unknown = set(values) - set(_BY_NAME)
        if unknown:
            raise ValueError(f"not PUBLISH properties: {sorted(unknown)}")
        self.__dict__.update(_TEMPLATE)
        self.__dict__.update(
            {k: list(v) if k in MULTIPLE else v for k, v in values.items() if v is not None}
        )
        self.__dict__["_packed"] = encode_properties(self.__dict__)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)  # type: ignore[no-untyped-call]
        self.__dict__["_packed"] = super().pack()  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


def install() -> bool:
    """Route paho's PUBLISH decoding through `decode_publish` (once; only for the paho
    versions this module was checked against). Returns whether it is in place."""
    if _packet.decode_publish is decode_publish:
        return True
    if not importlib.metadata.version("paho-mqtt").startswith(CHECKED_PAHO):
        return False
    _packet.decode_publish = decode_publish
    return True
