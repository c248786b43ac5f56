"""3. The facefleet forwarder vs a Mosquitto bridge, edge broker -> cloud broker.

Both relay `facefleet/<node>/#` from a plain edge mosquitto to the cloud mosquitto (TLS, client
certificate CN = node, the fleet ACL), QoS 1 on both hops, persistent sessions, persistence on:
- forwarder: `facefleet forwarder` with its SQLite spool (fsync per batch), default settings;
- bridge: a `connection` block in the edge broker's own config (MQTT v5, cleansession false,
  QoS 1, TLS with the node's certificate), the edge broker's persistence on.
The messages are faces as far as the relays can tell (a face id in their user properties), and
the subscriber on the cloud broker answers each with a receipt, as the processor does once the
face is stored: the forwarder keeps a face spooled until its receipt comes (`uplink.confirm =
"receipt"`, the default); the bridge ignores receipts.
Both edges also run the audit logger (it reads every face from the edge broker, as on a device).
Throughput: N messages of 32 KB published at QoS 1 to the edge broker as fast as the publisher
goes; rate = N / (last arrival at a QoS 1 subscriber on the cloud broker - first publish). The
direct case (publisher straight to the cloud broker, no relay) is measured for reference.
CPU per message: process CPU seconds (user + system, /proc) from the first publish to
`SETTLE_S` after the last arrival (the forwarder's receipts and deletes come after it), over N:
the relaying process (the forwarder; for the bridge the edge broker, which is the bridge) and
the whole edge without the detector (broker, logger and, where there is one, the forwarder);
and the whole machine's (every process and the kernel, /proc/stat), with how many cores were
busy until the last arrival: when that is all of them, the rate is set by the CPU all the
processes of a run spend per message, the publisher, subscriber and brokers included.
Outage: messages at a fixed rate before, during and after a cloud broker outage of fixed length
(clean stop, restart on the same port with its persistence); lost = published - distinct
arrived once the relay has drained (or a deadline passed).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tests.support import ServiceProcess, wait_until

from bench.common import Options, ProcSample, machine_cpu_s, progress
from facefleet.contract import Receipt, faces_topic, new_face_id, receipts_topic
from facefleet.health import StatusWatch
from facefleet.localbroker import MONITOR_IDENTITY, LocalBroker
from facefleet.mqtt import MqttSettings, make_client, publish_properties, start, user_properties

NODE = "bench-edge"
#: The subscriber's identity on the cloud broker: a processor's rights (read faces, write
#: receipts).
RECEIVER = "bench-receiver"
PAYLOAD_BYTES = 32 * 1024
#: Each payload starts with its run and sequence number.
HEADER = struct.Struct(">QQ")
RECONNECT_MAX_S = 2
#: CPU is counted until this long after the last arrival.
SETTLE_S = 1.0


@dataclass
class BridgedEdge(LocalBroker):
    """An edge broker whose config carries a bridge `connection` block to the cloud broker."""

    cloud: LocalBroker | None = None
    node: str = NODE

    def write_config(self) -> None:
        super().write_config()
        assert self.cloud is not None
        cert = self.cloud.client_cert(self.node)
        bridge = [
            "",
            "connection cloud",
            f"address {self.cloud.host}:{self.cloud.port}",
            "bridge_protocol_version mqttv50",
            "cleansession false",
            "local_cleansession false",
            f"remote_clientid facefleet-bridge-{self.node}",
            f"local_clientid facefleet-bridge-local-{self.node}",
            f"topic {self.prefix}/{self.node}/# out 1",
            "try_private false",
            f"restart_timeout 1 {RECONNECT_MAX_S}",
            f"bridge_cafile {self.cloud.ca_file}",
            f"bridge_certfile {cert.cert}",
            f"bridge_keyfile {cert.key}",
            "bridge_tls_version tlsv1.2",
        ]
        with open(self.config_path, "a") as handle:
            handle.write("\n".join(bridge) + "\n")


@dataclass
class Subscriber:
    """QoS 1 subscriber on the cloud broker with a persistent session; counts the distinct
    sequence numbers of its own `run` and the time of each first arrival, and answers every
    face with a receipt as a processor does. Messages of earlier runs on the same relay (a
    face the forwarder sends again because its receipt was lost with the last subscriber)
    are answered but not counted."""

    settings: MqttSettings
    topic: str
    run: int = field(default_factory=time.monotonic_ns)
    arrivals: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    earlier_runs: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.client = make_client(self.settings, f"bench-sub-{os.getpid()}-{time.monotonic_ns()}")
        # receipts stand in for those of several processors: they must not queue behind
        # paho's default window of 20 (a forwarder stops at `unconfirmed_max` without them)
        self.client.max_inflight_messages_set(1000)
        self.receipts: list[mqtt.MQTTMessageInfo] = []
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_message = self._on_message
        start(self.client, self.settings, persistent=True)
        wait_until(self.client.is_connected, 15, "subscriber connected")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) < HEADER.size:
            return
        face_id = user_properties(msg).get("id")
        if face_id:
            receipt = Receipt(face_id, "stored").encode()
            self.receipts.append(client.publish(receipts_topic("facefleet", NODE), receipt, qos=1))
        run, seq = HEADER.unpack_from(msg.payload)
        now = time.monotonic()
        with self.lock:
            if run != self.run:
                self.earlier_runs += 1
            elif seq in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[seq] = now

    def count(self, seqs: range) -> int:
        with self.lock:
            return sum(1 for s in seqs if s in self.arrivals)

    def close(self) -> None:
        """Once the broker has every receipt, disconnect and end the session, so the broker
        stops queueing for it."""
        with contextlib.suppress(TimeoutError):  # what is left is resent, counted as earlier
            wait_until(lambda: all(r.is_published() for r in self.receipts), 30, "receipts")
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()


class SequencePublisher:
    """QoS 1 publisher of numbered 32 KB messages of one run on the faces topic of NODE."""

    def __init__(self, settings: MqttSettings, run: int, prefix: str = "facefleet") -> None:
        self.run = run
        self.topic = faces_topic(prefix, NODE)
        self.client = make_client(settings, f"bench-pub-{os.getpid()}-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.filler = os.urandom(PAYLOAD_BYTES - HEADER.size)
        self.infos: list[mqtt.MQTTMessageInfo] = []
        start(self.client, settings)
        wait_until(self.client.is_connected, 15, "publisher connected")

    def publish(self, seq: int) -> None:
        payload = HEADER.pack(self.run, seq) + self.filler
        props = publish_properties(None, [("id", new_face_id())])
        self.infos.append(self.client.publish(self.topic, payload, qos=1, properties=props))

    def wait_acked(self, timeout_s: float) -> None:
        wait_until(lambda: all(i.is_published() for i in self.infos), timeout_s, "edge PUBACKs")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Relay:
    """One relay under test between a fresh edge and cloud broker."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir / kind
        self.cloud = LocalBroker("cloud", workdir=self.workdir / "cloud", processors=(RECEIVER,))
        self.edge: LocalBroker
        if kind == "bridge":
            self.edge = BridgedEdge("edge", workdir=self.workdir / "edge", cloud=self.cloud)
        else:
            self.edge = LocalBroker("edge", workdir=self.workdir / "edge")
        self.forwarder: ServiceProcess | None = None
        self.logger: ServiceProcess | None = None

    def start(self) -> None:
        self.cloud.start()
        self.edge.start()
        self.logger = ServiceProcess(
            "logger",
            {
                "node": NODE,
                "heartbeat_s": 2.0,
                "mqtt": self.edge.settings_for().as_table(),
                "audit": {"path": str(self.workdir / "audit.jsonl"), "stderr": False},
            },
            self.workdir,
        ).start()
        if self.kind == "forwarder":
            config = {
                "node": NODE,
                "heartbeat_s": 2.0,
                "edge": self.edge.settings_for().as_table(),
                "cloud": self.cloud.settings_for(NODE).as_table(reconnect_max_s=RECONNECT_MAX_S),
                "spool": {"path": str(self.workdir / "spool" / "spool.sqlite")},
            }
            self.forwarder = ServiceProcess("forwarder", config, self.workdir).start()
            board = StatusWatch(self.cloud.settings_for(MONITOR_IDENTITY)).start()
            try:
                wait_until(lambda: board.online(NODE, "forwarder"), 30, "forwarder online")
            finally:
                board.close()

    def edge_processes(self) -> dict[str, ProcSample]:
        """The edge's processes but the detector: broker, logger, forwarder (if any)."""
        assert self.edge.process is not None
        assert self.logger is not None
        procs = {"broker": self.edge.process.pid, "logger": self.logger.pid}
        if self.forwarder is not None:
            procs["forwarder"] = self.forwarder.pid
        return {name: ProcSample(pid) for name, pid in procs.items()}

    @property
    def relaying(self) -> str:
        """The edge process that relays: the forwarder, or the broker that bridges."""
        return "forwarder" if self.kind == "forwarder" else "broker"

    def subscriber(self) -> Subscriber:
        settings = self.cloud.settings_for(RECEIVER)
        return Subscriber(
            MqttSettings(**{**settings.__dict__, "reconnect_max_s": RECONNECT_MAX_S}),
            faces_topic("facefleet", NODE),
        )

    def warm_up(self, sub: Subscriber, pub: SequencePublisher) -> None:
        """One message through, so the relay is connected end to end before timing."""
        pub.publish(10**9)
        wait_until(lambda: 10**9 in sub.arrivals, 30, f"{self.kind}: first message relayed")

    def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.logger is not None:
            self.logger.stop()
        self.edge.cleanup()
        self.cloud.cleanup()


def throughput(relay: Relay, count: int) -> dict[str, Any]:
    sub = relay.subscriber()
    pub = SequencePublisher(relay.edge.settings_for(), sub.run)
    procs = relay.edge_processes()
    try:
        relay.warm_up(sub, pub)
        cpu0 = {name: p.cpu_s() for name, p in procs.items()}
        machine0 = machine_cpu_s()
        began = time.monotonic()
        for seq in range(count):
            pub.publish(seq)
        wait_until(lambda: sub.count(range(count)) == count, 300, f"{relay.kind}: {count} relayed")
        seconds = max(sub.arrivals[s] for s in range(count)) - began
        busy_cores = (machine_cpu_s() - machine0) / (time.monotonic() - began)
        time.sleep(SETTLE_S)
        cpu_us = {name: (p.cpu_s() - cpu0[name]) * 1e6 / count for name, p in procs.items()}
        machine_us = (machine_cpu_s() - machine0) * 1e6 / count
    finally:
        pub.close()
        sub.close()
    return {
        "messages": count,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(count / seconds, 1),
        "mb_per_s": round(count * PAYLOAD_BYTES / seconds / 1e6, 2),
        "cpu_us_per_msg": round(cpu_us[relay.relaying], 1),
        "edge_cpu_us_per_face": round(sum(cpu_us.values()), 1),
        "edge_cpu_us_by_process": {name: round(us, 1) for name, us in cpu_us.items()},
        "machine_cpu_us_per_msg": round(machine_us, 1),
        "machine_busy_cores": round(busy_cores, 2),
    }


def direct(workdir: Path, count: int) -> dict[str, Any]:
    """No relay: the publisher straight to the cloud broker (TLS), same subscriber. Not a
    ceiling (the publisher then pays for TLS itself), a reference for the harness."""
    with LocalBroker("cloud", workdir=workdir / "direct", processors=(RECEIVER,)) as cloud:
        settings = cloud.settings_for(RECEIVER)
        sub = Subscriber(settings, faces_topic("facefleet", NODE))
        pub = SequencePublisher(cloud.settings_for(NODE), sub.run)
        try:
            began = time.monotonic()
            for seq in range(count):
                pub.publish(seq)
            wait_until(lambda: sub.count(range(count)) == count, 300, "direct")
            seconds = max(sub.arrivals[s] for s in range(count)) - began
        finally:
            pub.close()
            sub.close()
    return {
        "msgs_per_s": round(count / seconds, 1),
        "mb_per_s": round(count * PAYLOAD_BYTES / seconds / 1e6, 2),
    }


def outage(
    relay: Relay, rate: float, before_s: float, outage_s: float, after_s: float
) -> dict[str, Any]:
    sub = relay.subscriber()
    pub = SequencePublisher(relay.edge.settings_for(), sub.run)
    seq = 0
    period = 1.0 / rate

    def publish_for(seconds: float) -> None:
        nonlocal seq
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < end:
            pub.publish(seq)
            seq += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    try:
        relay.warm_up(sub, pub)
        publish_for(before_s)
        relay.cloud.stop()
        down_at = time.monotonic()
        publish_for(outage_s - 0.2)
        time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        relay.cloud.start()
        restored = time.monotonic()
        publish_for(after_s)
        pub.wait_acked(30)
        published = seq
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: sub.count(range(published)) == published, 60, "drained")
        arrived = sub.count(range(published))
        caught_up = (
            max(sub.arrivals[s] for s in range(published) if s in sub.arrivals) - restored
            if arrived
            else None
        )
    finally:
        pub.close()
        sub.close()
    return {
        "published": published,
        "arrived": arrived,
        "lost": published - arrived,
        "duplicates": sub.duplicates,
        "resent_from_earlier_runs": sub.earlier_runs,
        "caught_up_s_after_restore": round(caught_up, 2) if caught_up is not None else None,
    }


def run(workdir: Path, options: Options) -> dict[str, Any]:
    quick = options.quick
    count = 200 if quick else 2000
    rate, before_s, outage_s, after_s = (50.0, 1.0, 3.0, 1.0) if quick else (50.0, 3.0, 10.0, 3.0)
    out: dict[str, Any] = {}
    for kind in ("forwarder", "bridge"):
        relay = Relay(kind, workdir)
        try:
            relay.start()
            # best of two: a short run on a shared machine is easily hit by a neighbour
            figures = max(
                (throughput(relay, count) for _ in range(1 if quick else 2)),
                key=lambda f: float(f["msgs_per_s"]),
            )
            progress(
                f"relay {kind:9s}: {figures['msgs_per_s']:7.1f} msgs/s "
                f"{figures['mb_per_s']:6.2f} MB/s ({count} x 32 KB, QoS 1, TLS uplink), "
                f"{figures['cpu_us_per_msg']:.0f} us CPU/msg relaying, "
                f"{figures['edge_cpu_us_per_face']:.0f} us CPU/face on the edge, "
                f"{figures['machine_cpu_us_per_msg']:.0f} us/msg and "
                f"{figures['machine_busy_cores']:.2f} cores busy on the machine"
            )
            lost = outage(relay, rate, before_s, outage_s, after_s)
            progress(
                f"relay {kind:9s}: {outage_s:.0f} s cloud outage: {lost['published']} published, "
                f"{lost['lost']} lost, {lost['duplicates']} duplicates"
            )
        finally:
            relay.stop()
        out[kind] = {**figures, "lost_in_outage": lost["lost"], "outage": lost}
    harness = direct(workdir, count)
    progress(
        f"relay none (publisher straight to the cloud broker, TLS): "
        f"{harness['msgs_per_s']:.1f} msgs/s"
    )
    out["direct_to_cloud"] = harness
    out["outage_s"] = outage_s
    out["conditions"] = (
        f"loopback, edge mosquitto plain -> cloud mosquitto TLS 1.2 with client certificates; "
        f"{PAYLOAD_BYTES // 1024} KB payloads, QoS 1; outage = cloud broker stopped cleanly "
        f"for {outage_s:.0f} s while {rate:.0f} msgs/s are published, then restarted on the "
        f"same port with its persistence; reconnect backoff 1..{RECONNECT_MAX_S} s for both; "
        f"the audit logger runs on both edges"
    )
    out["edge"] = {
        "cpu_us_per_face": out["forwarder"]["edge_cpu_us_per_face"],
        "by_process": out["forwarder"]["edge_cpu_us_by_process"],
        "with_bridge": out["bridge"]["edge_cpu_us_per_face"],
    }
    out["forwarder_over_bridge"] = round(
        out["forwarder"]["msgs_per_s"] / max(0.1, out["bridge"]["msgs_per_s"]), 2
    )
    return out
