"""paho-mqtt's client, reading its socket a chunk at a time instead of a few bytes per call.

paho reads each packet with one call for its first byte, one per byte of its remaining length
and one for the rest: five system calls (or TLS reads) for every 32 KB face, each releasing
and taking back the GIL that the forwarder's four threads share. And its loop reads at most one
packet per wake-up from a device's broker (a round of select, write and housekeeping in Python
per face). `BufferedClient` reads up to `READ_CHUNK` bytes at a time and hands paho the packets
already in its buffer in the same round (paho's loop skips select while `pending()` says bytes
are waiting, as it does for TLS). And paho wakes its loop with a byte on a socket pair for every
packet another thread queues: `batched` lets a thread queue many (the forwarder's acknowledgements
of a spooled batch, its publishes of a window) and wake the loop once.

Only for the paho versions `facefleet.wire` was checked against (`make_client` decides).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
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


class Waker:
    """paho's wake-up socket (a byte written to it ends the loop's select), written once for
    all the packets a thread queues in `held`."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._local = threading.local()

    def send(self, data: bytes) -> int:
        if getattr(self._local, "held", False):
            self._local.due = True
            return len(data)
        return int(self._sock.send(data))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._local.held, self._local.due = True, False
        try:
            yield
        finally:
            self._local.held = False
            if self._local.due:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                    self._sock.send(b"0")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def batched(client: mqtt.Client) -> AbstractContextManager[None]:
    """Packets the calling thread queues inside wake the client's loop once, at the end."""
    waker = getattr(client, "_sockpairW", None)
    return waker.held() if isinstance(waker, Waker) else contextlib.nullcontext()


class BufferedClient(mqtt.Client):
    """paho's client on a `BufferedSocket`, handling every packet already read in one round."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_start(self) -> MQTTErrorCode:
        rc = super().loop_start()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sockpairW = Waker(self._sockpairW)  # type: ignore[assignment]
        return rc

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(ROUND_PACKETS):  # bounded: the loop must get to its writes
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None:
                break
            if not self._sock.pending():  # type: ignore[attr-defined]
                break
            rc = super().loop_read(max_packets)
        return rc
