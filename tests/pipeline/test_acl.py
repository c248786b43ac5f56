"""The cloud broker's ACL, walked on a real mosquitto with real client certificates: every
identity kind against every topic family, of its own name and of another device, for reading
and writing; allowed exactly where `contract.TOPIC_RIGHTS` says (issue #15). The role renders
the same ACL as the demo's broker (checked here too)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from facefleet.contract import DEFAULT_PREFIX, TOPIC_FAMILIES, TOPIC_RIGHTS
from facefleet.localbroker import LocalBroker, cloud_acl
from facefleet.mqtt import make_client
from tests.support import ROOT

PROCESSOR, MONITOR, DEVICE, OTHER_DEVICE = "cloud-1", "monitor", "edge-1", "edge-2"
IDENTITIES = {"device": DEVICE, "processor": PROCESSOR, "monitor": MONITOR}
#: The one who may write each family of a device's topics (to see who can read them).
WRITERS = {"faces": "own", "status": "own", "receipts": PROCESSOR}


def topic(family: str, node: str) -> str:
    return TOPIC_FAMILIES[family].format(prefix=DEFAULT_PREFIX, node=node).replace("+", "detector")


def allowed(kind: str, access: str, family: str, node: str) -> bool:
    """What the contract grants: an identity's own name, or another device's ("any")."""
    whose = "own" if node == IDENTITIES[kind] else "any"
    return (access, family, whose) in TOPIC_RIGHTS[kind]


class Client:
    """One connected identity: what its QoS 1 publishes were answered, what it received."""

    def __init__(self, broker: LocalBroker, identity: str) -> None:
        settings = broker.settings_for(identity)
        self.client = make_client(settings, f"acl-{identity}")
        self.received: set[str] = set()
        self.pubacks: dict[int, int] = {}
        self.done = threading.Condition()
        self.subacks: set[int] = set()
        self.client.on_message = lambda _c, _u, msg: self.received.add(msg.topic)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()

    def _on_publish(self, _c: object, _u: object, mid: int, reason: object, _p: object) -> None:
        with self.done:
            self.pubacks[mid] = int(getattr(reason, "value", reason))  # type: ignore[call-overload]
            self.done.notify_all()

    def _on_subscribe(self, _c: object, _u: object, mid: int, *_: object) -> None:
        with self.done:
            self.subacks.add(mid)
            self.done.notify_all()

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe (mosquitto grants every subscription and filters what it delivers)."""
        mid = self.client.subscribe([(t, 1) for t in topics])[1]
        with self.done:
            assert self.done.wait_for(lambda: mid in self.subacks, 10), "no SUBACK"

    def publish(self, topic: str) -> bool:
        """Whether the broker accepted a QoS 1 publish (PUBACK reason code below 128)."""
        mid = self.client.publish(topic, b"acl", qos=1).mid
        with self.done:
            assert self.done.wait_for(lambda: mid in self.pubacks, 10), f"no PUBACK on {topic}"
            return self.pubacks[mid] < 128

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[dict[str, Client]]:
    broker = LocalBroker(
        "cloud", workdir=tmp_path / "cloud", processors=(PROCESSOR,), monitors=(MONITOR,)
    )
    with broker:
        names = [DEVICE, OTHER_DEVICE, PROCESSOR, MONITOR]
        opened = {name: Client(broker, name) for name in names}
        try:
            yield opened
        finally:
            for client in opened.values():
                client.close()


@pytest.mark.broker
def test_every_identity_may_do_exactly_what_the_contract_grants(clients: dict[str, Client]) -> None:
    nodes = (DEVICE, OTHER_DEVICE, PROCESSOR, MONITOR)
    cells = [
        (kind, family, node) for kind in IDENTITIES for family in TOPIC_FAMILIES for node in nodes
    ]
    # reading: each identity subscribes to every topic, then the one allowed to write them does
    for name in IDENTITIES.values():
        clients[name].subscribe(sorted({topic(f, n) for _, f, n in cells}))
    wrong: list[str] = []
    for family in TOPIC_FAMILIES:
        for node in (DEVICE, OTHER_DEVICE):
            writer = node if WRITERS[family] == "own" else WRITERS[family]
            assert clients[writer].publish(topic(family, node)), f"{writer} may write {family}"
    deadline = time.monotonic() + 5
    expected_reads = {
        (kind, topic(family, node))
        for kind, family, node in cells
        if node in (DEVICE, OTHER_DEVICE) and allowed(kind, "read", family, node)
    }
    while time.monotonic() < deadline and not all(
        t in clients[IDENTITIES[k]].received for k, t in expected_reads
    ):
        time.sleep(0.1)
    time.sleep(0.5)  # anything delivered that should not be has arrived by now
    for kind, family, node in cells:
        name, where = IDENTITIES[kind], topic(family, node)
        if node in (DEVICE, OTHER_DEVICE):
            read = where in clients[name].received
            if read != allowed(kind, "read", family, node):
                wrong.append(f"{kind} {'reads' if read else 'cannot read'} {where}")
        wrote = clients[name].publish(where)
        if wrote != allowed(kind, "write", family, node):
            wrong.append(f"{kind} {'writes' if wrote else 'cannot write'} {where}")
    assert not wrong, wrong


@pytest.mark.parametrize("revoked", [(), ("edge-3", "cloud-2")])
def test_the_role_renders_the_same_acl_as_the_demo_broker(revoked: tuple[str, ...]) -> None:
    template = ROOT / "roles" / "mosquitto" / "templates" / "acl.j2"
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters["comment"] = lambda text: f"# {text}"
    rendered = environment.from_string(template.read_text()).render(
        ansible_managed="managed",
        facefleet_prefix=DEFAULT_PREFIX,
        mosquitto_processors=["cloud-1", "cloud-2"],
        mosquitto_monitors=["monitor"],
        _mosquitto_revoked=sorted(revoked),
    )

    def rules(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    demo = cloud_acl(DEFAULT_PREFIX, ("cloud-1", "cloud-2"), ("monitor",), tuple(sorted(revoked)))
    assert rules(rendered) == rules(demo)
    # the deploy finds the names its ACL refuses by these comments (a lifted one: a restart)
    assert [line for line in rendered.splitlines() if line.startswith("# revoked: ")] == [
        line for line in demo.splitlines() if line.startswith("# revoked: ")
    ]
