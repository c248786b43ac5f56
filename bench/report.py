"""The results as a Markdown table and PNG charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {
    "detector": "yunet >= 60 fps",
    "evaluation": "0 non-faces, 0 unusable, all stored, <= 1.3 each",
    "uplink": ">= 20x fewer bytes, 0 missed",
    "relay": "forwarder >= bridge",
    "processor": "2 replicas >= 1.7x",
}


#: Issue #18: the four-edge rollout, from the start of site.yml to the last health gate.
ROLLOUT_TARGET_S = 150.0


def _get(results: dict[str, Any], dotted: str, default: Any = None) -> Any:
    value: Any = results
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "-"
    return f"{a / b:.2f}x"


def _where(latency: dict[str, Any]) -> str:
    return "lab fleet" if str(latency.get("where", "")).startswith("lab fleet") else "loopback"


def targets(results: dict[str, Any]) -> dict[str, bool | None]:
    """Each target of the issue: met (True), missed (False) or not measured (None)."""

    def check(*keys: str) -> list[Any] | None:
        values = [_get(results, k) for k in keys]
        return None if any(v is None for v in values) else values

    out: dict[str, bool | None] = {}
    v = check("detector.fps.yunet")
    out["detector"] = None if v is None else v[0] >= 60
    e = _get(results, "detector.evaluation.yunet")
    out["evaluation"] = None if e is None else (
        e["non_faces"] == 0 and e["unusable"] == 0 and not e["required_missed"]
        and e["crops_per_stored_person"] <= 1.3
    )  # fmt: skip
    v = check(
        "uplink.bytes_per_person.default",
        "uplink.bytes_per_person.homework",
        "uplink.persons_missed.default",
    )
    out["uplink"] = None if v is None else (v[1] >= 20 * v[0] and v[2] == 0)
    v = check("forwarder.msgs_per_s", "bridge.msgs_per_s")
    out["relay"] = None if v is None else v[0] >= v[1]
    v = check("processor.faces_per_s.1", "processor.faces_per_s.2")
    out["processor"] = None if v is None else v[1] >= 1.7 * v[0]
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results
    met = targets(r)

    def mark(name: str) -> str:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[met.get(name)]
        return f"{TARGETS[name]}: {verdict}"

    rows: list[tuple[str, str, str, str, str]] = []
    for name in ("yunet", "haar"):
        fps, base = _get(r, f"detector.fps.{name}"), _get(r, "detector.fps.homework")
        rows.append(
            (
                f"detector fps, {name}, synthetic 640x480, 1 CPU",
                _num(fps),
                f"homework {_num(base)}",
                _ratio(fps, base),
                mark("detector") if name == "yunet" else "",
            )
        )
        fps, base = (
            _get(r, f"detector.fps_clip_640x360.{name}"),
            _get(r, "detector.fps_clip_640x360.homework"),
        )
        rows.append(
            (f"detector fps, {name}, clip 640x360", _num(fps), f"homework {_num(base)}",
             _ratio(fps, base), "")
        )  # fmt: skip
    for label, key in (
        ("detector fps, yunet with gate + merging, synthetic 640x480", "fps"),
        ("detector frames per CPU second, yunet with gate + merging",
         "fps_per_cpu_s_synthetic_640x480"),
    ):  # fmt: skip
        value, base = _get(r, f"detector.{key}.yunet"), _get(r, f"detector.{key}.yunet-bare")
        if base is not None:
            rows.append((label, _num(value), f"without {_num(base)}", _ratio(value, base), ""))
    after, before = _get(r, "detector.evaluation.yunet"), _get(r, "detector.evaluation.yunet-bare")
    if after and before:

        def stored(e: dict[str, Any]) -> str:
            return (f"{e['persons_stored']} of {e['persons_required']} persons, "
                    f"{e['crops']} crops, {e['crops_per_stored_person']} each, "
                    f"{e['non_faces']} non-faces, {e['unusable']} unusable")  # fmt: skip

        rows.append(
            ("stored, clip vs labelled truth (facefleet evaluate)", stored(after),
             f"without gate + merging: {stored(before)}", "", mark("evaluation"))
        )  # fmt: skip
    cpu, base = (
        _get(r, "detector.fps_per_cpu_s_synthetic_640x480.yunet"),
        _get(r, "detector.fps_per_cpu_s_synthetic_640x480.homework"),
    )
    if cpu is not None:
        rows.append(
            ("detector frames per CPU second, yunet, synthetic 640x480", _num(cpu),
             f"homework {_num(base)}", _ratio(cpu, base), "")
        )  # fmt: skip
    for name in ("yunet", "haar"):
        acc, base = (
            _get(r, f"detector.accuracy.{name}", {}),
            _get(r, "detector.accuracy.homework", {}),
        )
        rows.append(
            (
                f"recall / precision, {name}, 43 labelled faces",
                f"{_num(acc.get('recall'), 3)} / {_num(acc.get('precision'), 3)}",
                f"homework {_num(base.get('recall'), 3)} / {_num(base.get('precision'), 3)}",
                "",
                "",
            )
        )
    persons = _get(r, "uplink.inputs.synthetic.persons")
    d, h = _get(r, "uplink.bytes_per_person.default"), _get(r, "uplink.bytes_per_person.homework")
    rows.append(
        (f"uplink bytes per person, synthetic ({persons} persons)", _num(d), f"homework {_num(h)}",
         _ratio(h, d) + " fewer" if d else "-", mark("uplink"))
    )  # fmt: skip
    d, h = (
        _get(r, "uplink.messages_per_person.default"),
        _get(r, "uplink.messages_per_person.homework"),
    )
    rows.append(("uplink messages per person, synthetic", _num(d, 2), f"homework {_num(h, 2)}",
                 _ratio(h, d) + " fewer" if d else "-", ""))  # fmt: skip
    clip = _get(r, "uplink.inputs.clip.modes", {})
    if clip:
        d = clip.get("default", {}).get("bytes_per_person")
        h = clip.get("homework", {}).get("bytes_per_person")
        rows.append(("uplink bytes per track, clip", _num(d), f"homework {_num(h)}",
                     _ratio(h, d) + " fewer" if d else "-", ""))  # fmt: skip
    rows.append(
        ("persons missed, synthetic", _num(_get(r, "uplink.persons_missed.default")),
         f"homework {_num(_get(r, 'uplink.persons_missed.homework'))}", "", "")
    )  # fmt: skip
    f, b = _get(r, "forwarder.msgs_per_s"), _get(r, "bridge.msgs_per_s")
    rows.append(("relay msgs/s, 32 KB QoS 1, edge -> cloud (TLS)", _num(f), f"bridge {_num(b)}",
                 _ratio(f, b), mark("relay")))  # fmt: skip
    f, b = _get(r, "forwarder.mb_per_s"), _get(r, "bridge.mb_per_s")
    rows.append(("relay MB/s", _num(f, 2), f"bridge {_num(b, 2)}", _ratio(f, b), ""))
    f, b = _get(r, "forwarder.cpu_us_per_msg"), _get(r, "bridge.cpu_us_per_msg")
    rows.append(("relay CPU us per message (relaying process)", _num(f), f"bridge {_num(b)}",
                 _ratio(f, b), ""))  # fmt: skip
    f, b = _get(r, "edge.cpu_us_per_face"), _get(r, "edge.with_bridge")
    rows.append(("edge CPU us per face (broker, logger, forwarder)", _num(f),
                 f"bridge {_num(b)}", _ratio(f, b), ""))  # fmt: skip
    f, b = _get(r, "forwarder.machine_cpu_us_per_msg"), _get(r, "bridge.machine_cpu_us_per_msg")
    busy = (_get(r, "forwarder.machine_busy_cores"), _get(r, "bridge.machine_busy_cores"))
    rows.append(("machine CPU us per message, all processes (cores busy)",
                 f"{_num(f)} ({_num(busy[0], 2)})", f"bridge {_num(b)} ({_num(busy[1], 2)})",
                 _ratio(f, b), ""))  # fmt: skip
    outage = _get(r, "relay.outage_s")
    rows.append(
        (f"messages lost in a {_num(outage, 0)} s cloud outage",
         f"{_num(_get(r, 'forwarder.lost_in_outage'))} of "
         f"{_num(_get(r, 'forwarder.outage.published'))}",
         f"bridge {_num(_get(r, 'bridge.lost_in_outage'))} of "
         f"{_num(_get(r, 'bridge.outage.published'))}", "", "")
    )  # fmt: skip
    lat = _get(r, "latency_ms", {})
    for figures in (lat, lat.get("loopback") or {}):
        if figures:
            rows.append(
                (f"latency capture -> stored, ms, {_num(figures.get('rate_per_s'), 0)} faces/s "
                 f"({_where(figures)})",
                 f"p50 {_num(figures.get('p50'), 0)} / p95 {_num(figures.get('p95'), 0)} / "
                 f"p99 {_num(figures.get('p99'), 0)}", "", "", "")
            )  # fmt: skip
    one = _get(r, "processor.faces_per_s.1")
    latency = _num(_get(r, "processor.s3_latency_ms"), 0)
    for n in ("1", "2", "4"):
        value = _get(r, f"processor.faces_per_s.{n}")
        rows.append(
            (f"processor faces/s, {n} replica(s), S3 at {latency} ms per PUT", _num(value),
             f"1 replica {_num(one)}", _ratio(value, one), mark("processor") if n == "2" else "")
        )  # fmt: skip
    instant = _get(r, "processor.instant_s3.faces_per_s", {})
    if instant:
        rows.append(
            ("processor faces/s, 1 / 2 / 4 replicas, instant S3 (CPU-bound reference)",
             " / ".join(_num(instant.get(n)) for n in ("1", "2", "4")), "1 replica",
             " / ".join(_ratio(instant.get(n), instant.get("1")) for n in ("2", "4")), "")
        )  # fmt: skip
    secure, fast = _get(r, "spool.secure.faces_per_s"), _get(r, "spool.fast.faces_per_s")
    rows.append(
        ("spool faces/s spooled and deleted, 32 KB, secure delete", _num(secure),
         f"FAST (former) {_num(fast)}", _ratio(secure, fast), "")
    )  # fmt: skip
    rows += scale_rows(_get(r, "scale", {}))
    rows += rollout_rows(_get(r, "rollout", {}))
    lines = [
        "| measurement | facefleet | baseline | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    # a section that did not run (`--only`) leaves its rows without a figure: left out
    lines += [f"| {' | '.join(row)} |" for row in rows if any(c.isdigit() for c in row[1])]
    foot = _get(r, "footprint", {})
    for figures in (foot, foot.get("loopback") or {}):
        if not figures.get("idle"):
            continue
        where = figures.get("where", "loopback")
        lines += [
            "",
            f"| service ({where}) | idle CPU % | idle RSS MB | load CPU % | load RSS MB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for service in ("detector", "logger", "forwarder", "processor"):
            idle, load = figures["idle"].get(service, {}), figures["load"].get(service, {})
            lines.append(
                f"| {service} | {_num(idle.get('cpu_pct'))} | {_num(idle.get('rss_mb'))} | "
                f"{_num(load.get('cpu_pct'))} | {_num(load.get('rss_mb'))} |"
            )
    lines += ["", f"Machine: {r.get('machine', '?')}."]
    if r.get("load_average"):
        lines.append(f"Load average (1 min) at start and end: {r['load_average']}.")
    return "\n".join(lines) + "\n"


def rollout_rows(rollout: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The lab's rollout to four edges, and what its per-host phases make of bigger fleets."""
    if not rollout:
        return []
    seconds = _get(rollout, "seconds.edges_4")
    verdict = "met" if seconds < ROLLOUT_TARGET_S else "NOT met"
    defaults = rollout.get("defaults", {})
    phases = rollout.get("phases", {})
    rows = [
        (
            f"rollout, 4 edges, start -> last health gate, s (canary {defaults.get('canary')}, "
            f"batches of {defaults.get('batch')}, forks {defaults.get('forks')})",
            _num(seconds),
            "",
            "",
            f"< {_num(ROLLOUT_TARGET_S, 0)} {verdict}",
        ),
        (
            "rollout phases, s: before staging / staging per host / cloud / batch per host",
            " / ".join(
                _num(phases.get(k))
                for k in ("before_staging_s", "staging_per_host_s", "cloud_s", "batch_per_host_s")
            ),
            "",
            "",
            "",
        ),
    ]
    for devices, projected in (rollout.get("projection_s") or {}).items():
        rows.append((f"rollout projected for {devices} edges, s", _num(projected, 0), "", "", ""))
    return rows


def scale_rows(scale: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The fleet simulator's figures at N devices against its small baseline fleet."""
    fleet, base = scale.get("fleet") or {}, scale.get("baseline") or {}
    if not fleet:
        return []
    n, b = fleet.get("nodes"), base.get("nodes")
    met = {name: t.get("met") for name, t in (scale.get("targets") or {}).items()}

    def target(name: str) -> str:
        limit = (scale.get("targets") or {}).get(name, {}).get("target")
        return f"< {_num(limit, 0)} " + ("met" if met.get(name) else "NOT met")

    def row(
        label: str, path: str, name: str = "", digits: int = 1
    ) -> tuple[str, str, str, str, str]:
        value, baseline = _get(fleet, path), _get(base, path)
        return (
            f"{label}, {n} devices",
            _num(value, digits),
            f"{b} devices: {_num(baseline, digits)}",
            _ratio(value, baseline),
            target(name) if name else "",
        )

    return [
        row("connect storm s", "connect_storm_s", "connect_storm_s"),
        row("reconnect after a broker restart s", "reconnect_after_restart_s"),
        row("latency publish -> receipt ms p50", "latency_ms.p50"),
        row("latency publish -> receipt ms p99", "latency_ms.p99", "latency_ms_p99"),
        row("faces/s stored (offered at the fleet rate)", "faces_per_s_stored"),
        row("broker CPU %", "footprint.broker.cpu_pct"),
        row("broker RSS MB", "footprint.broker.rss_mb"),
        row("simulator CPU %", "footprint.simulator.cpu_pct"),
        row("heartbeat bytes/s at the broker", "heartbeat_bytes_per_s", digits=0),
        row("fleet status s", "fleet_status_s", "fleet_status_s", digits=2),
        row("monitor key -> screen ms p95", "monitor.key_ms_p95", "monitor_key_ms_p95"),
    ]


def charts(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """detector.png (speed and accuracy side by side), latency.png (distribution),
    scaling.png (relay and processor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    det = results.get("detector") or {}
    if det.get("fps"):
        names = list(det["fps"])
        fig, (speed, accuracy) = plt.subplots(1, 2, figsize=(10, 4))
        width = 0.38
        xs = range(len(names))
        speed.bar([x - width / 2 for x in xs], [det["fps"][n] for n in names], width,
                  label="synthetic 640x480")  # fmt: skip
        clip = det.get("fps_clip_640x360", {})
        speed.bar([x + width / 2 for x in xs], [clip.get(n, 0) for n in names], width,
                  label="clip 640x360")  # fmt: skip
        speed.axhline(60, color="grey", linestyle="--", linewidth=1, label="target 60 fps")
        speed.set_xticks(list(xs), names)
        speed.set_ylabel("frames per second (1 CPU, incl. publish)")
        speed.set_title("detector speed")
        speed.legend(fontsize=8)
        acc = det.get("accuracy", {})
        accuracy.bar([x - width / 2 for x in xs], [acc.get(n, {}).get("recall", 0) for n in names],
                     width, label="recall")  # fmt: skip
        accuracy.bar([x + width / 2 for x in xs],
                     [acc.get(n, {}).get("precision", 0) for n in names], width,
                     label="precision")  # fmt: skip
        accuracy.set_xticks(list(xs), names)
        accuracy.set_ylim(0, 1.05)
        accuracy.set_title("accuracy on 43 labelled faces")
        accuracy.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out_dir / "detector.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    lat = results.get("latency_ms") or {}
    if lat.get("samples"):
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(lat["samples"], bins=40, color="tab:blue")
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(lat[q], color="black", linestyle=style, label=f"{q} {lat[q]:.0f} ms")
        ax.set_xlabel("capture -> stored in S3, ms")
        ax.set_ylabel("faces")
        ax.set_title(
            f"end-to-end latency at {lat.get('rate_per_s', 0):.0f} faces/s ({_where(lat)})"
        )
        ax.legend()
        fig.tight_layout()
        path = out_dir / "latency.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    proc = _get(results, "processor.faces_per_s", {})
    fwd, bridge = _get(results, "forwarder.msgs_per_s"), _get(results, "bridge.msgs_per_s")
    if proc or fwd:
        fig, (relay, scaling) = plt.subplots(1, 2, figsize=(10, 4))
        if fwd is not None and bridge is not None:
            relay.bar(["forwarder", "mosquitto bridge"], [fwd, bridge], color=["tab:blue", "grey"])
            relay.set_ylabel("32 KB QoS 1 messages per second")
            relay.set_title("edge -> cloud relay")
        if proc:
            scaling.plot([int(k) for k in proc], list(proc.values()), marker="o")
            scaling.set_xticks([int(k) for k in proc])
            scaling.set_xlabel("processor replicas")
            scaling.set_ylabel("faces stored per second")
            scaling.set_title(
                f"processor scaling (S3 at {_num(_get(results, 'processor.s3_latency_ms'), 0)} ms)"
            )
            scaling.set_ylim(bottom=0)
        fig.tight_layout()
        path = out_dir / "scaling.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
