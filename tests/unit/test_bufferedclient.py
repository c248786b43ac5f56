from __future__ import annotations

import contextlib
import select
import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facefleet.bufferedclient import READ_CHUNK, BufferedSocket, Waker, batched


def test_reads_come_from_one_chunk_and_errors_from_the_socket() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    buffered = BufferedSocket(left)
    right.sendall(b"\x30\x05hello" + b"\x40\x02\x00\x01")  # a PUBLISH-like and a PUBACK
    assert buffered.recv(1) == b"\x30"
    assert buffered.pending() == 10
    assert buffered.recv(1) == b"\x05"
    assert buffered.recv(100) == b"hello\x40\x02\x00\x01"  # never more than asked for
    assert buffered.pending() == 0
    with pytest.raises(BlockingIOError):  # empty buffer: the socket's own error
        buffered.recv(1)
    sender = threading.Thread(target=right.sendall, args=(b"x" * (READ_CHUNK + 10),))
    sender.start()
    received = b""
    while len(received) < READ_CHUNK + 10:
        select.select([buffered], [], [], 5)
        with contextlib.suppress(BlockingIOError):
            received += buffered.recv(READ_CHUNK + 10)
    sender.join()
    assert received == b"x" * (READ_CHUNK + 10)
    right.close()
    assert buffered.recv(1) == b""  # closed: as the socket says
    assert buffered.fileno() == left.fileno()
    buffered.close()


def test_a_batch_wakes_the_loop_once_and_other_threads_as_before() -> None:
    loop_side, waker_side = socket.socketpair()
    loop_side.setblocking(False)
    waker = Waker(waker_side)
    with waker.held():
        for _ in range(100):  # what paho does for each packet it queues
            assert waker.send(b"x") == 1
        other = threading.Thread(target=waker.send, args=(b"y",))  # not held there
        other.start()
        other.join()
    assert loop_side.recv(1000) == b"y0"
    with waker.held():
        pass  # nothing queued: no wake-up
    waker.send(b"x")
    assert loop_side.recv(1000) == b"x"
    waker.close()
    loop_side.close()


def test_batched_is_a_no_op_for_a_client_without_its_waker() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    with batched(client):
        pass
