"""The forwarder's delivery ledger: which spooled messages are out at the cloud broker, which
faces wait for a processor's receipt, when each is sent again and when it may leave the spool.

Pure state, driven by events: the sender thread reports what it published (`sent`,
`sent_again`, `gone`) and what came back (`puback`, `receipt`, `reconnected`), and asks what
to do next (`overdue`, `deletable`). No broker, no spool, no threads; time comes from the
injected clock. A status message is done on its PUBACK. A face is done on its receipt (with
`uplink.confirm = "receipt"`): a PUBACK only says the broker has the message, and a broker
restart or crash can still lose it. A face whose receipt is late is due again after
`receipt_timeout_s`, doubling per attempt up to ten times that; a resend is harmless, the
processor stores a face id once and confirms the copy as a duplicate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from facefleet.contract import Receipt

log = logging.getLogger(__name__)

#: Confirmed messages are deleted from the spool in batches of this size, or this often.
DELETE_BATCH = 256
DELETE_EVERY_S = 0.25
#: MQTT v5 PUBACK reason "No matching subscribers": nobody received the face (no processor
#: subscribed, e.g. right after a cloud broker restart), so it is sent again after this long.
NO_SUBSCRIBERS = 16
NO_SUBSCRIBERS_RETRY_S = 2.0
#: After a reconnect to the cloud (a restarted broker may have lost what it acknowledged),
#: unconfirmed faces are sent again this long after the link is back, unless their receipts,
#: queued in our persistent session, arrive first.
RECONNECT_RESEND_S = 5.0
#: The log says how many faces were sent again each time this many more were.
RESEND_LOG_EVERY = 500


@dataclass
class _InFlight:
    """A message awaiting the cloud broker's PUBACK."""

    seq: int
    size: int
    face_id: str | None  # set for faces that wait for a processor's receipt
    first_send: bool


@dataclass
class _Unconfirmed:
    """A face sent to the cloud and not yet confirmed by a processor."""

    seq: int
    attempts: int = 1
    due: float | None = None  # when to send it again; None while its PUBACK is outstanding


class Delivery:
    """Not thread-safe: one thread (the forwarder's sender) drives it; the heartbeat only reads
    its counters."""

    def __init__(
        self,
        receipt_timeout_s: float,
        unconfirmed_max: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.receipt_timeout_s = receipt_timeout_s
        self.unconfirmed_max = unconfirmed_max
        self.clock = clock
        self.inflight: dict[int, _InFlight] = {}  # by MQTT message id
        self.unconfirmed: dict[str, _Unconfirmed] = {}  # by face id, oldest first
        self._done: list[int] = []  # confirmed, not yet handed out for deletion
        self._done_at = clock()
        self._next_due = math.inf  # earliest `due` among the unconfirmed
        self.forwarded = 0  # messages: faces and the edge services' relayed heartbeats
        self.forwarded_faces = 0
        self.uplink_bytes = 0
        self.uplink_face_bytes = 0
        self.confirmed = 0
        self.resent = 0
        self._resent_logged = 0
        self.rejected = 0  # refused by the cloud broker
        self.rejected_by_processor = 0

    @property
    def room(self) -> int:
        """How many more new faces may go out before receipts come back."""
        return self.unconfirmed_max - len(self.unconfirmed)

    # -- what the sender did ----------------------------------------------------------

    def sent(self, mid: int, seq: int, size: int, face_id: str | None) -> None:
        """Spooled message `seq` went out for the first time as MQTT message `mid`;
        `face_id` is set for a face that waits for a receipt."""
        if face_id is not None:
            self.unconfirmed[face_id] = _Unconfirmed(seq)
        self.inflight[mid] = _InFlight(seq, size, face_id, first_send=True)

    def sent_again(self, mid: int, face_id: str, size: int) -> None:
        """An overdue face went out again as MQTT message `mid`."""
        waiting = self.unconfirmed[face_id]
        waiting.attempts += 1
        waiting.due = None
        self.resent += 1
        self.inflight[mid] = _InFlight(waiting.seq, size, face_id, first_send=False)
        if self.resent - self._resent_logged >= RESEND_LOG_EVERY or self._resent_logged == 0:
            log.info("%d face(s) sent again in total: their receipts were late", self.resent)
            self._resent_logged = self.resent

    def gone(self, face_id: str) -> None:
        """An overdue face is no longer spooled (evicted by drop-oldest when the spool was
        full, or expired; counted there): there is nothing left to send or wait for."""
        del self.unconfirmed[face_id]

    # -- what came back ---------------------------------------------------------------

    def puback(self, mid: int, reason: int) -> None:
        """The cloud broker acknowledged MQTT message `mid` with `reason` (a v5 reason code)."""
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return
        if reason >= 0x80:
            # kept in the spool: sent again after a restart, once the ACL or identity is fixed
            self.rejected += 1
            log.error(
                "cloud broker refused spooled message %d (reason %d; check the ACL and the "
                "certificate CN); it stays in the spool",
                entry.seq,
                reason,
            )
            return
        if entry.first_send:
            self.forwarded += 1
            self.uplink_bytes += entry.size
            if entry.face_id is not None:
                self.forwarded_faces += 1
                self.uplink_face_bytes += entry.size
        if entry.face_id is None:
            self._done.append(entry.seq)
            return
        waiting = self.unconfirmed.get(entry.face_id)
        if waiting is None:
            return  # its receipt came first
        if reason == NO_SUBSCRIBERS:
            waiting.due = self.clock() + NO_SUBSCRIBERS_RETRY_S
        else:
            timeout = self.receipt_timeout_s
            backoff = min(timeout * 2 ** (waiting.attempts - 1), timeout * 10)
            waiting.due = self.clock() + backoff
        self._next_due = min(self._next_due, waiting.due)

    def receipt(self, receipt: Receipt) -> None:
        """A processor confirmed a face (a duplicate receipt, or one for a face already
        forgotten, changes nothing)."""
        waiting = self.unconfirmed.pop(receipt.id, None)
        if waiting is None:
            return
        self._done.append(waiting.seq)
        self.confirmed += 1
        if receipt.status == "rejected":
            self.rejected_by_processor += 1
            log.warning("a processor dead-lettered face %s (see its dead letters)", receipt.id)

    def reconnected(self) -> None:
        """The cloud link is back: every face the broker acknowledged is due again within
        RECONNECT_RESEND_S (those still awaiting their PUBACK, paho retransmits itself)."""
        when = self.clock() + RECONNECT_RESEND_S
        for waiting in self.unconfirmed.values():
            if waiting.due is not None and waiting.due > when:
                waiting.due = when
        self._next_due = min(self._next_due, when)

    # -- what to do next --------------------------------------------------------------

    def overdue(self, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` faces whose receipt is overdue, oldest first, as (face id, spool
        sequence number); the sender reports each back with `sent_again` or `gone`. Those
        beyond the limit stay due for when the window frees."""
        now = self.clock()
        if now < self._next_due:
            return []
        due = [
            (face_id, waiting.seq)
            for face_id, waiting in self.unconfirmed.items()
            if waiting.due is not None and waiting.due <= now
        ]
        if len(due) > limit:
            due, self._next_due = due[:limit], now
        else:
            self._next_due = min(
                (w.due for w in self.unconfirmed.values() if w.due is not None and w.due > now),
                default=math.inf,
            )
        return due

    def deletable(self, everything: bool = False) -> list[int]:
        """Sequence numbers of confirmed messages to delete from the spool, in batches (or
        `everything` at shutdown); a delete that is late, or lost in a crash, only means the
        message is sent again."""
        now = self.clock()
        if not self._done or not (
            everything
            or len(self._done) >= DELETE_BATCH
            or not self.inflight
            or now - self._done_at >= DELETE_EVERY_S
        ):
            return []
        done, self._done, self._done_at = self._done, [], now
        return done
