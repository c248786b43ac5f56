"""paho-mqtt's client, reading its socket a chunk at a time instead of a few bytes per call.

paho reads each packet with one call for its first byte, one per byte of its remaining length
and one for the rest: five system calls (or TLS reads) for every 32 KB face, each releasing
and taking back the GIL that the forwarder's four threads share. And its loop reads at most one
packet per wake-up from a device's broker (a round of select, write and housekeeping in Python
per face). `BufferedClient` reads up to `READ_CHUNK` bytes at a time and hands paho the packets
already in its buffer in the same round (paho's loop skips select while `pending()` says bytes
are waiting, as it does for TLS).

Only for the paho versions `facefleet.wire` was checked against (`make_client` decides).
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

#: Bytes read from the socket at a time: a few faces, well within a socket's receive buffer.
READ_CHUNK = 256 * 1024
#: Packets handled per round of paho's loop at most, before it writes (acknowledgements,
#: publishes) and sees to its keepalive.
ROUND_PACKETS = 64


class BufferedSocket:
    """A connected socket (plain or TLS) whose reads are served from a buffer; everything
    else goes to the socket. Errors of a read (would block, closed, TLS wants more) come from
    the socket as they would without the buffer: the buffer is empty when it reads."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos == len(self._buffer):
            data: bytes = self._sock.recv(max(bufsize, READ_CHUNK))
            if len(data) <= bufsize:
                return data
            self._buffer, self._pos = data, 0
        start = self._pos
        self._pos = min(start + bufsize, len(self._buffer))
        return self._buffer[start : self._pos]

    def pending(self) -> int:
        """Bytes read and not yet handed out, plus what TLS holds decrypted."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buffer) - self._pos + int(inner)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(mqtt.Client):
    """paho's client on a `BufferedSocket`, handling every packet already read in one round."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(ROUND_PACKETS):  # bounded: the loop must get to its writes
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None:
                break
            if not self._sock.pending():  # type: ignore[attr-defined]
                break
            rc = super().loop_read(max_packets)
        return rc
