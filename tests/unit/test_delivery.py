"""The forwarder's delivery ledger, transition by transition, on a hand-driven clock."""

from __future__ import annotations

import pytest

from facefleet.contract import Receipt
from facefleet.forwarder.delivery import (
    DELETE_BATCH,
    DELETE_EVERY_S,
    NO_SUBSCRIBERS,
    NO_SUBSCRIBERS_RETRY_S,
    RECONNECT_RESEND_S,
    Delivery,
)

TIMEOUT_S = 10.0
SUCCESS = 0
REFUSED = 0x87  # not authorized


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(clock: Clock) -> Delivery:
    return Delivery(TIMEOUT_S, unconfirmed_max=3, clock=clock)


def send_face(ledger: Delivery, mid: int, face_id: str = "f1", seq: int = 1) -> None:
    ledger.sent(mid, seq, 100, face_id)
    ledger.puback(mid, SUCCESS)


def assert_due_after(
    ledger: Delivery, clock: Clock, wait_s: float, due: list[tuple[str, int]]
) -> None:
    """Nothing is due until `wait_s` has passed, then `due` is."""
    clock.now += wait_s - 0.1
    assert ledger.overdue(10) == []
    clock.now += 0.1
    assert ledger.overdue(10) == due


def test_a_status_message_is_done_on_its_puback(ledger: Delivery) -> None:
    ledger.sent(1, 7, 50, None)
    assert (len(ledger.inflight), len(ledger.unconfirmed)) == (1, 0)
    ledger.puback(1, SUCCESS)
    assert (ledger.forwarded, ledger.forwarded_faces, ledger.uplink_bytes) == (1, 0, 50)
    assert ledger.deletable() == [7]  # nothing in flight: at once
    assert ledger.deletable() == []


def test_a_face_is_done_on_its_receipt_not_its_puback(ledger: Delivery) -> None:
    send_face(ledger, mid=1, face_id="f1", seq=7)
    assert (ledger.forwarded_faces, ledger.uplink_face_bytes) == (1, 100)
    assert ledger.deletable() == []  # acknowledged by the broker, not yet stored
    assert ledger.room == 2
    ledger.receipt(Receipt("f1", "stored"))
    assert (ledger.confirmed, ledger.room) == (1, 3)
    assert ledger.deletable() == [7]


def test_a_receipt_before_the_puback_settles_the_face(ledger: Delivery, clock: Clock) -> None:
    ledger.sent(1, 7, 100, "f1")
    ledger.receipt(Receipt("f1", "stored"))
    ledger.puback(1, SUCCESS)
    assert ledger.forwarded_faces == 1
    assert ledger.deletable() == [7]
    clock.now += 100 * TIMEOUT_S
    assert ledger.overdue(10) == []


def test_a_face_without_its_receipt_is_due_again_with_backoff(
    ledger: Delivery, clock: Clock
) -> None:
    send_face(ledger, mid=1, face_id="f1", seq=7)
    assert_due_after(ledger, clock, TIMEOUT_S, [("f1", 7)])
    ledger.sent_again(2, "f1", 100)
    assert ledger.resent == 1
    assert ledger.overdue(10) == []  # not again while its PUBACK is outstanding
    ledger.puback(2, SUCCESS)
    assert ledger.forwarded == 1  # a resend is not forwarded twice
    assert_due_after(ledger, clock, 2 * TIMEOUT_S, [("f1", 7)])  # twice as long


def test_the_backoff_stops_growing_at_ten_timeouts(ledger: Delivery, clock: Clock) -> None:
    send_face(ledger, mid=1)
    for mid in range(2, 10):
        clock.now += 10 * TIMEOUT_S
        assert ledger.overdue(10) == [("f1", 1)]
        ledger.sent_again(mid, "f1", 100)
        ledger.puback(mid, SUCCESS)
    assert_due_after(ledger, clock, 10 * TIMEOUT_S, [("f1", 1)])


def test_no_subscribers_sends_the_face_again_soon(ledger: Delivery, clock: Clock) -> None:
    ledger.sent(1, 7, 100, "f1")
    ledger.puback(1, NO_SUBSCRIBERS)
    clock.now += NO_SUBSCRIBERS_RETRY_S
    assert ledger.overdue(10) == [("f1", 7)]


def test_the_window_limits_resends_and_the_rest_stay_due(ledger: Delivery, clock: Clock) -> None:
    for n in (1, 2, 3):
        send_face(ledger, mid=n, face_id=f"f{n}", seq=n)
    clock.now += TIMEOUT_S
    assert ledger.overdue(2) == [("f1", 1), ("f2", 2)]  # oldest first
    ledger.sent_again(4, "f1", 100)
    ledger.sent_again(5, "f2", 100)
    assert ledger.overdue(2) == [("f3", 3)]


def test_a_reconnect_brings_acknowledged_faces_due_soon(ledger: Delivery, clock: Clock) -> None:
    send_face(ledger, mid=1, face_id="f1", seq=1)
    ledger.sent(2, 2, 100, "f2")  # its PUBACK outstanding: paho retransmits it itself
    ledger.reconnected()
    assert_due_after(ledger, clock, RECONNECT_RESEND_S, [("f1", 1)])


def test_a_reconnect_does_not_delay_a_face_due_sooner(ledger: Delivery, clock: Clock) -> None:
    ledger.sent(1, 1, 100, "f1")
    ledger.puback(1, NO_SUBSCRIBERS)
    ledger.reconnected()
    clock.now += NO_SUBSCRIBERS_RETRY_S
    assert ledger.overdue(10) == [("f1", 1)]


def test_a_duplicate_receipt_changes_nothing(ledger: Delivery) -> None:
    send_face(ledger, mid=1, face_id="f1", seq=7)
    ledger.receipt(Receipt("f1", "stored"))
    ledger.receipt(Receipt("f1", "duplicate"))
    ledger.receipt(Receipt("unknown", "stored"))
    assert ledger.confirmed == 1
    assert ledger.deletable() == [7]


def test_a_dead_lettered_face_is_done_and_counted(ledger: Delivery) -> None:
    send_face(ledger, mid=1, face_id="f1", seq=7)
    ledger.receipt(Receipt("f1", "rejected"))
    assert (ledger.confirmed, ledger.rejected_by_processor) == (1, 1)
    assert ledger.deletable() == [7]


def test_a_refused_message_stays_spooled_and_is_not_sent_again(
    ledger: Delivery, clock: Clock
) -> None:
    ledger.sent(1, 7, 100, "f1")
    ledger.sent(2, 8, 50, None)
    ledger.puback(1, REFUSED)
    ledger.puback(2, REFUSED)
    assert (ledger.rejected, ledger.forwarded) == (2, 0)
    clock.now += 100 * TIMEOUT_S
    assert ledger.overdue(10) == []
    assert ledger.deletable() == []


def test_a_face_gone_from_the_full_spool_is_forgotten(ledger: Delivery, clock: Clock) -> None:
    for n in (1, 2, 3):
        send_face(ledger, mid=n, face_id=f"f{n}", seq=n)
    assert ledger.room == 0  # no new faces until receipts come
    clock.now += TIMEOUT_S
    assert ledger.overdue(10) == [("f1", 1), ("f2", 2), ("f3", 3)]
    ledger.gone("f1")  # drop-oldest evicted it meanwhile
    assert ledger.room == 1
    ledger.receipt(Receipt("f1", "stored"))  # a late receipt for it changes nothing
    assert ledger.confirmed == 0
    assert ledger.deletable() == []


def test_an_unknown_puback_is_ignored(ledger: Delivery) -> None:
    ledger.puback(99, SUCCESS)
    assert (ledger.forwarded, ledger.deletable()) == (0, [])


def test_deletes_wait_for_a_batch_or_a_quiet_moment(ledger: Delivery, clock: Clock) -> None:
    ledger.sent(1, 1, 10, None)
    ledger.sent(2, 2, 10, None)
    ledger.puback(1, SUCCESS)
    assert ledger.deletable() == []  # still one in flight, the batch is young
    clock.now += DELETE_EVERY_S
    assert ledger.deletable() == [1]
    for mid in range(3, 3 + DELETE_BATCH):
        ledger.sent(mid, mid, 10, None)
        ledger.puback(mid, SUCCESS)
    assert ledger.deletable() == list(range(3, 3 + DELETE_BATCH))  # a full batch: at once
    ledger.puback(2, SUCCESS)
    ledger.sent(1000, 1000, 10, None)
    ledger.sent(1001, 1001, 10, None)
    ledger.puback(1000, SUCCESS)
    assert ledger.deletable(everything=True) == [2, 1000]  # at shutdown
