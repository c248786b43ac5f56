"""The four views. The app redraws the one shown from the FleetModel on its timer; each view
handles its own widgets' events (filter, sort, selection, thumbnails) and tells the app what it
must act on with a message."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from PIL import Image as PILImage
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Input, Label, Sparkline, Static

from facefleet.contract import (
    SERVICES,
    SERVICES_BY_KIND,
    DetectorFigures,
    ForwarderFigures,
    ProcessorFigures,
    platform_summary,
)
from facefleet.health import (
    NEVER,
    OFFLINE,
    ONLINE,
    STALE,
    STOPPED,
    certificate_days,
    certificate_text,
)
from facefleet_monitor.alerts import ERROR, WARNING, Alert, AlertLogEntry
from facefleet_monitor.formatting import format_age, format_clock, format_face_time, summarize
from facefleet_monitor.model import FleetModel
from facefleet_monitor.state import NodeStatus
from facefleet_monitor.table import Cells, RowTable
from facefleet_monitor.thumbnail import decode_thumbnail

STATE_STYLE = {
    ONLINE: "green",
    STOPPED: "yellow",
    OFFLINE: "bold red",
    STALE: "bold red",
    NEVER: "red dim",
}
SEVERITY_STYLE = {ERROR: "bold red", WARNING: "yellow", "resolved": "green"}
SORT_MODES = ("problems", "node", "last face")
#: The fleet summary's service states, problems first.
SUMMARY_STATES = (OFFLINE, STALE, STOPPED, NEVER, ONLINE)


#: The cell of a service that a node does not run.
NO_SERVICE = Text("-", style="dim")


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def service_states(node: NodeStatus, now: float) -> dict[str, str]:
    """The node's services that report or are expected to, and their states."""
    return {
        service: status.health(now)
        for service, status in node.services.items()
        if status.seen_at is not None or status.expected
    }


def fleet_summary(model: FleetModel, now: float) -> Text:
    """The whole fleet in one line, problems first: nodes by their worst alert, then the
    services in a state other than online, then those online (what a thousand rows cannot
    show at a glance)."""
    worst = Counter(model.severity(name) for name in model.nodes)
    states = Counter(
        state for node in model.nodes.values() for state in service_states(node, now).values()
    )
    text = Text(f" {len(model.nodes)} nodes: ", style="bold")
    text.append(f"{worst[2]} with errors", style="bold red" if worst[2] else "dim")
    text.append(" · ")
    text.append(f"{worst[1]} with warnings", style="yellow" if worst[1] else "dim")
    text.append(f" · {worst[0]} fine · services: ")
    shown = [state for state in SUMMARY_STATES if states[state] or state == ONLINE]
    text.append_text(
        Text(" · ").join(
            Text(f"{states[state]} {state}", style=STATE_STYLE[state]) for state in shown
        )
    )
    return text


def fit_columns(table: DataTable[Any]) -> None:
    """Size each column to its label and the cells it holds now, at once. DataTable only
    ever widens columns (clear() keeps their widths), so a value shown once (a node's `never
    seen` before its first heartbeat) kept its column wide, and the layout depended on which
    redraws had come first (a snapshot test flaked on it)."""
    for key, column in table.columns.items():
        cells = (
            cell if isinstance(cell, Text) else Text.from_markup(cell) if isinstance(cell, str)
            else Text(str(cell))
            for cell in table.get_column(key)
        )  # fmt: skip
        column.content_width = max([column.label.cell_len, *(text.cell_len for text in cells)])


def _number(value: Any, fmt: str = "{}") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return fmt.format(value)


def cursor_row_key(table: DataTable[Any]) -> str | None:
    """The key of the row under a table's cursor, None when the table is empty."""
    if not table.row_count:
        return None
    try:
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
    except Exception:
        return None
    return str(key.value) if key.value is not None else None


class View(Widget):
    """What the app needs of a tab's view: `redraw` from the model (the app calls it for the
    view shown, on its timer) and `focus_main_table`. A view handles its own widgets' events;
    what the app must act on comes to it as a message.

    A view lists its container first (`FleetView(Vertical, View)`): Textual takes a widget's
    default CSS, its layout among it, from the first base class only."""

    #: The table that takes the keys when the view is shown (up/down/enter work at once).
    MAIN_TABLE = ""

    @dataclass
    class Changed(Message):
        """The view's own settings changed (filter, sort): redraw now, not at the next tick."""

    def redraw(self, model: FleetModel, now: float) -> None:
        raise NotImplementedError

    def focus_main_table(self) -> None:
        self.query_one(self.MAIN_TABLE).focus()


class FleetView(Vertical, View):
    """One row per node: service states, version, key figures, last face."""

    MAIN_TABLE = "#fleet-table"

    @dataclass
    class NodeChosen(Message):
        """Enter on a node's row: the app opens the node's page."""

        node: str

    COLUMNS = (
        ("node", "Node"),
        ("kind", "Kind"),
        *((s, s.capitalize()) for s in SERVICES),
        ("version", "Version"),
        ("fps", "FPS"),
        ("camera", "Camera"),
        ("spool", "Spool"),
        ("oldest", "Oldest"),
        ("uploads", "Uploads"),
        ("errors", "Errors"),
        ("last_face", "Last face"),
    )

    def __init__(self, *, cursor_blink: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cursor_blink = cursor_blink
        self.sort_mode = SORT_MODES[0]
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        yield Static(id="fleet-summary")
        yield Input(
            placeholder="filter: node, kind or state  (/ to focus, esc to leave)",
            id="fleet-filter",
        )
        yield RowTable(self.COLUMNS, id="fleet-table", zebra_stripes=True)
        yield Static(id="fleet-footer")

    def on_mount(self) -> None:
        self.query_one("#fleet-filter", Input).cursor_blink = self.cursor_blink

    @staticmethod
    def kind_of(model: FleetModel, node: NodeStatus) -> str:
        kind = node.kind or "?"
        if model.has_inventory and not node.expected:
            kind += " (unlisted)"
        if node.refused:
            kind += f" ({node.refused})"
        return kind

    def matches(self, model: FleetModel, node: NodeStatus, now: float) -> bool:
        """Whether every word of the filter is in the node's name, kind, states or camera."""
        detector = node.figures(DetectorFigures)
        haystack = " ".join(
            [
                node.name,
                self.kind_of(model, node),
                *service_states(node, now).values(),
                str((detector.camera if detector else None) or ""),
            ]
        ).lower()
        return all(word in haystack for word in self.filter_text.lower().split())

    def row_for(self, model: FleetModel, node: NodeStatus, now: float) -> list[Text | str]:
        """Cells of a node's row."""
        severity = model.severity(node.name)
        name_style = {2: "bold white on dark_red", 1: "bold black on yellow"}.get(severity, "bold")
        cells: list[Text | str] = [Text(node.name, style=name_style), self.kind_of(model, node)]
        states = service_states(node, now)
        for service in SERVICES:
            cells.append(state_text(states[service]) if service in states else NO_SERVICE)
        detector = node.figures(DetectorFigures)
        forwarder = node.figures(ForwarderFigures)
        processor = node.figures(ProcessorFigures)
        camera = detector.camera if detector else None
        cells += [
            node.version() or "-",
            _number(detector.fps, "{:.1f}") if detector else "-",
            Text(
                str(camera),
                style="bold red"
                if camera == "lost"
                else ("yellow" if camera in ("reopening", "ended") else ""),
            )
            if camera
            else "-",
            _number(forwarder.spool_depth) if forwarder else "-",
            format_age(forwarder.spool_oldest_age_s)
            if forwarder and forwarder.spool_oldest_age_s is not None
            else "-",
            _number(processor.stored) if processor else "-",
            Text(str(node.errors()), style="bold red") if node.errors() else "0",
            f"{format_face_time(node.last_face_ts)[:8]} ({format_age(now - node.last_face_at)})"
            if node.last_face_at is not None
            else "-",
        ]
        return cells

    def redraw(self, model: FleetModel, now: float) -> None:
        nodes = list(model.nodes.values())
        if self.filter_text.strip():
            nodes = [node for node in nodes if self.matches(model, node, now)]
        if self.sort_mode == "problems":
            nodes.sort(key=lambda n: (-model.severity(n.name), n.name))
        elif self.sort_mode == "last face":
            nodes.sort(key=lambda n: (-(n.last_face_at or 0.0), n.name))
        else:
            nodes.sort(key=lambda n: n.name)
        self.query_one("#fleet-table", RowTable).show(
            [node.name for node in nodes],
            lambda name: self.row_for(model, model.nodes[name], now),
        )
        self.query_one("#fleet-summary", Static).update(fleet_summary(model, now))
        problems = sum(1 for n in model.nodes if model.severity(n))
        self.query_one("#fleet-footer", Static).update(
            f" {len(nodes)} of {len(model.nodes)} nodes shown · {problems} with problems · "
            f"sorted by {self.sort_mode} (s: change)"
        )

    def cycle_sort(self) -> None:
        self.sort_mode = SORT_MODES[(SORT_MODES.index(self.sort_mode) + 1) % len(SORT_MODES)]
        self.post_message(self.Changed())

    def focus_filter(self) -> None:
        self.query_one("#fleet-filter", Input).focus()

    @on(Input.Changed, "#fleet-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.post_message(self.Changed())

    @on(Input.Submitted, "#fleet-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.focus_main_table()

    @on(RowTable.RowSelected, "#fleet-table")
    def _node_selected(self, event: RowTable.RowSelected) -> None:
        self.post_message(self.NodeChosen(event.key))


class SparklineRow(Horizontal):
    """A node's name, its faces per minute as a sparkline, and the last minute's figure."""

    def __init__(self) -> None:
        super().__init__()
        self.node = Label("", classes="rate-node")
        self.sparkline = Sparkline([], classes="rate")
        self.now = Label("", classes="rate-now")

    def compose(self) -> ComposeResult:
        yield self.node
        yield self.sparkline
        yield self.now

    def show(self, node: str, series: list[float]) -> None:
        self.node.update(node)
        self.sparkline.data = series
        self.now.update(f"{series[-1]:.0f}/min")


class DetectionsView(Horizontal, View):
    """The live face feed, the selected face's thumbnail, faces per minute per node."""

    MAIN_TABLE = "#detections-table"
    #: rows in the live table; at high rates every visible row changes each tick anyway
    SHOWN = 100
    #: nodes with a faces-per-minute line (the busiest)
    SPARKLINES = 12

    @dataclass
    class ThumbnailFailed(Message):
        """A kept face's bytes could not be decoded: the app records it in the model."""

        face_id: str
        node: str
        reason: str

    def __init__(self, image: Widget, **kwargs: Any) -> None:
        """`image` is the textual-image widget that shows the selected face."""
        super().__init__(**kwargs)
        self.image = image
        self._shown: list[str] = []
        self._sparklines: list[SparklineRow] = []
        #: the model of the last redraw: a row highlighted between redraws (arrow keys) shows
        #: its face at once
        self._model: FleetModel | None = None
        self._thumbnail_for: str | None = None

    def compose(self) -> ComposeResult:
        yield DataTable(id="detections-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="face-pane"):
            yield Static("no face selected", id="face-info")
            yield self.image
            yield Static("Faces per minute", classes="pane-title")
            with VerticalScroll(id="sparklines"):
                yield Label("", id="sparklines-rest")

    def on_mount(self) -> None:
        table = self.query_one("#detections-table", DataTable)
        for key, label in (
            ("time", "Time (UTC)"),
            ("node", "Node"),
            ("track", "Track"),
            ("score", "Score"),
            ("size", "Size"),
            ("bytes", "Bytes"),
        ):
            table.add_column(label, key=key)

    def redraw(self, model: FleetModel, now: float) -> None:
        table = self.query_one("#detections-table", DataTable)
        detections = list(model.detections)[: self.SHOWN]
        ids = [d.id for d in detections]
        if ids != self._shown:
            selected = cursor_row_key(table)
            follow = selected is None or table.cursor_row == 0
            table.clear()
            for d in detections:
                table.add_row(
                    format_face_time(d.ts),
                    d.node,
                    str(d.track),
                    f"{d.score:.2f}",
                    f"{d.box[2]}x{d.box[3]}",
                    Text(f"{d.size} ✖ {d.problem}", style="bold red") if d.problem else str(d.size),
                    key=d.id,
                )
            fit_columns(table)
            self._shown = ids
            if ids and not follow and selected in ids:
                table.move_cursor(row=ids.index(selected), animate=False)
            elif ids:
                table.move_cursor(row=0, animate=False)
        self._redraw_sparklines(model, now)
        self._model = model
        self._show_selected_face(model)

    def _redraw_sparklines(self, model: FleetModel, now: float) -> None:
        """The busiest `SPARKLINES` nodes' faces per minute, in name order, on a fixed set of
        rows (a row per node was four widgets per node to lay out on every switch to this
        view: 20 s at a thousand nodes); a line under them counts the rest."""
        box = self.query_one("#sparklines", VerticalScroll)
        series = {
            name: model.faces_per_minute(name, now)
            for name, node in model.nodes.items()
            if node.kind == "edge" or node.faces_total
        }
        busiest = sorted(sorted(series, key=lambda n: (-sum(series[n]), n))[: self.SPARKLINES])
        while len(self._sparklines) < len(busiest):
            row = SparklineRow()
            box.mount(row, before=self.query_one("#sparklines-rest"))
            self._sparklines.append(row)
        for row, name in zip(self._sparklines, busiest + [""] * len(self._sparklines)):
            row.display = bool(name)
            if name:
                row.show(name, series[name])
        rest = [name for name in series if name not in busiest]
        self.query_one("#sparklines-rest", Label).update(
            f"{len(rest)} more nodes: {sum(series[n][-1] for n in rest):.0f}/min" if rest else ""
        )

    # --- the selected face ----------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#detections-table")
    def _face_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self._model is not None:
            self._show_selected_face(self._model)

    def _show_selected_face(self, model: FleetModel) -> None:
        face_id = cursor_row_key(self.query_one("#detections-table", DataTable))
        if face_id is None or face_id == self._thumbnail_for:
            return
        self._thumbnail_for = face_id
        detection = next((d for d in model.detections if d.id == face_id), None)
        if detection is None:
            return
        info = self.query_one("#face-info", Static)
        info.update(
            f"{detection.node} · track {detection.track} · score {detection.score:.2f}\n"
            f"box {','.join(map(str, detection.box))} in {detection.frame[0]}x"
            f"{detection.frame[1]} · {detection.detector}\n{detection.ts}"
        )
        kept = model.thumbnail(face_id)
        if detection.problem or kept is None:
            self.image.image = None  # type: ignore[attr-defined]
            reason = detection.problem or (
                f"image not kept (only the last {model.max_thumbnails} faces are)"
            )
            info.update(f"{info.content}\n[b red]{reason}[/]")
            return
        self._decode_face(face_id, detection.node, kept[1])

    @work(thread=True, exclusive=True, group="thumbnail")
    def _decode_face(self, face_id: str, node: str, payload: bytes) -> None:
        """Decode off the UI thread; a payload Pillow cannot read becomes an alert entry."""
        try:
            picture = decode_thumbnail(payload)
        except Exception as exc:  # Pillow raises many kinds on corrupt data
            reason = f"cannot decode: {exc}"
            self.app.call_from_thread(self._thumbnail_failed, face_id, node, reason)
            return
        self.app.call_from_thread(self._show_thumbnail, face_id, picture)

    def _show_thumbnail(self, face_id: str, picture: PILImage.Image) -> None:
        if face_id == self._thumbnail_for:
            self.image.image = picture  # type: ignore[attr-defined]

    def _thumbnail_failed(self, face_id: str, node: str, reason: str) -> None:
        self.post_message(self.ThumbnailFailed(face_id, node, reason))
        if face_id == self._thumbnail_for:
            self.image.image = None  # type: ignore[attr-defined]
            info = self.query_one("#face-info", Static)
            info.update(f"{info.content}\n[b red]{reason}[/]")


class NodeView(Vertical, View):
    """One node: its services now and their recent heartbeats."""

    MAIN_TABLE = "#node-history"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("no node selected: pick one in the fleet view (enter)", id="node-title")
        yield Static("", id="node-platform")
        yield DataTable(id="node-services", cursor_type="row")
        yield Static("Recent heartbeats", classes="pane-title")
        yield DataTable(id="node-history", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        services = self.query_one("#node-services", DataTable)
        for key, label in (
            ("service", "Service"),
            ("state", "State"),
            ("version", "Version"),
            ("seen", "Last heartbeat"),
            ("interval", "Interval"),
            ("uptime", "Uptime"),
            ("figures", "Figures"),
        ):
            services.add_column(label, key=key)
        history = self.query_one("#node-history", DataTable)
        for key, label in (
            ("time", "Time (UTC)"),
            ("service", "Service"),
            ("state", "State"),
            ("figures", "Figures"),
        ):
            history.add_column(label, key=key)

    def redraw(self, model: FleetModel, now: float) -> None:
        if self.node is None and model.nodes:
            self.node = sorted(model.nodes)[0]
        node = model.nodes.get(self.node or "")
        services = self.query_one("#node-services", DataTable)
        history = self.query_one("#node-history", DataTable)
        services.clear()
        history.clear()
        if node is not None:
            self._show(model, node, now, services, history)
        fit_columns(services)
        fit_columns(history)

    def _show(
        self,
        model: FleetModel,
        node: NodeStatus,
        now: float,
        services: DataTable[Any],
        history: DataTable[Any],
    ) -> None:
        expected = (
            "in the inventory"
            if node.expected
            else ("not in the inventory" if model.has_inventory else "seen on the broker")
        )
        processor = node.figures(ProcessorFigures)
        stored = processor.stored if processor else None
        if node.kind == "cloud" or isinstance(stored, int):
            # a cloud node publishes no faces: what it did is store the fleet's
            faces = f"{stored if isinstance(stored, int) else 0} faces stored by its processor"
        else:
            faces = f"{node.faces_total} faces seen from it"
            if node.last_face_ts:
                faces += f", last at {format_face_time(node.last_face_ts)}"
        self.query_one("#node-title", Static).update(
            Text.assemble(
                (node.name, "bold"),
                f"  {node.kind or 'unknown kind'} · {expected} · {faces}"
                + (f" · {node.bad_messages} bad messages" if node.bad_messages else ""),
            )
        )
        platform = platform_summary(s.status for s in node.ordered_services() if s.status)
        line = f"runs on {platform}" if platform else "platform not reported"
        certified = [
            s.status for s in node.ordered_services() if s.status and s.status.cert_expires
        ]
        days = certificate_days(certified[0], now) if certified else None
        if certified and days is not None:
            expires = certified[0].cert_expires or ""
            line += f" · certificate {certificate_text(days, expires)}"
        self.query_one("#node-platform", Static).update(line)
        wanted = list(SERVICES_BY_KIND.get(node.kind, ()))
        for status in node.ordered_services():
            if status.seen_at is None and status.service not in wanted:
                continue
            reported = status.status
            uptime = reported.uptime_s if reported else None
            services.add_row(
                status.service,
                state_text(status.health(now)),
                (reported.version if reported else None) or "-",
                f"{format_clock(status.seen_at)} ({format_age(now - status.seen_at)} ago)"
                if status.seen_at is not None
                else "-",
                f"{status.interval_s:g}s" if status.interval_s else "-",
                format_age(uptime) if uptime is not None else "-",
                summarize(reported.figures if reported else None) or "-",
            )
        entries = [
            (entry, status.service) for status in node.services.values() for entry in status.history
        ]
        rank = {name: i for i, name in enumerate(SERVICES)}
        entries.sort(key=lambda e: (-e[0].at, rank.get(e[1], 99)))
        for entry, service in entries[:100]:
            when = format_clock(entry.at)
            if entry.count > 1:
                when = f"{format_clock(entry.since)}-{when} ({entry.count}x)"
            history.add_row(when, service, state_text(entry.state), entry.summary or "-")


class AlertsView(Vertical, View):
    """Active problems, then the log of alerts raised, resolved and bad messages."""

    MAIN_TABLE = "#alerts-active"
    #: the log's newest entries shown
    LOG_SHOWN = 200

    def compose(self) -> ComposeResult:
        yield Static("Active", classes="pane-title")
        yield RowTable(
            (("severity", "Severity"), ("node", "Node"), ("service", "Service"), ("text", "Alert")),
            id="alerts-active",
        )
        yield Static("Log (newest first)", classes="pane-title")
        yield RowTable(
            (("time", "Time (UTC)"), ("level", "Level"), ("node", "Node"), ("text", "What")),
            id="alerts-log",
            zebra_stripes=True,
        )

    def redraw(self, model: FleetModel, now: float) -> None:
        alerts = {
            alert.key: alert
            for alert in sorted(
                model.active.values(),
                key=lambda a: (a.severity != ERROR, a.node, a.service, a.key),
            )
        }
        self.query_one("#alerts-active", RowTable).show(
            list(alerts), lambda key: alert_cells(alerts[key])
        )
        newest = list(reversed(model.log))[: self.LOG_SHOWN]
        self.query_one("#alerts-log", RowTable).show(
            [str(n) for n in range(len(newest))],  # a row's place, newest first
            lambda key: log_cells(newest[int(key)]),
        )


def alert_cells(alert: Alert) -> Cells:
    return (
        Text(alert.severity, style=SEVERITY_STYLE[alert.severity]),
        alert.node,
        alert.service or "-",
        alert.text,
    )


def log_cells(entry: AlertLogEntry) -> Cells:
    return (
        format_clock(entry.at),
        Text(entry.severity, style=SEVERITY_STYLE.get(entry.severity, "")),
        entry.node or "-",
        entry.text,
    )
