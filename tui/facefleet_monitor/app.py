"""The Textual app: wires the MQTT feed to the model and the model to the views.

MQTT callbacks post one small message per event (thread safe); handlers only update the
model. Views redraw on a timer (`refresh_hz`), never per message, so a burst of 1,000
messages a second costs one redraw per tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from facefleet_monitor.alerts import AlertLogEntry
from facefleet_monitor.config import MonitorConfig
from facefleet_monitor.events import ConnectionEvent, FeedEvent, StatusEvent
from facefleet_monitor.feed import FlowGate, Inbox, MonitorFeed
from facefleet_monitor.model import FleetModel
from facefleet_monitor.views import AlertsView, DetectionsView, FleetView, NodeView, View

TABS = ("fleet", "detections", "node", "alerts")
#: Keys of the widgets themselves (not app bindings), for the help screen.
WIDGET_KEYS = (
    ("up / down, page up / down", "move between rows of a table"),
    ("left / right", "scroll a table wider than the screen"),
    ("enter", "fleet: open the node's page"),
    ("esc", "leave the filter"),
    ("ctrl+p", "command palette: every action, and 'Node <name>' to jump to a node"),
)


class HelpScreen(ModalScreen[None]):
    """Every key of the monitor: the app's bindings (one source) and the tables' own keys."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Close"),
        Binding("question_mark", "app.pop_screen", "Close", show=False),
        Binding("q", "app.pop_screen", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: auto; max-width: 90%; height: auto; max-height: 90%;
            border: round $primary; padding: 0 1; background: $surface; }
    #help Static { width: auto; }
    """

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        width = max(len(key) for key, _ in self.keys)
        lines = [f"[b]{key:<{width}}[/]  {text}" for key, text in self.keys]
        # a long list scrolls on a small terminal
        with VerticalScroll(id="help"):
            yield Static("\n".join(["[b]Keys[/] (esc or ? closes)", "", *lines]))


def image_widget_class(protocol: str) -> type[Widget]:
    """The textual-image widget for a protocol; 'auto' lets textual-image query the terminal
    (import this before the app starts: the query cannot run under Textual)."""
    import textual_image.widget as images

    classes: dict[str, type[Widget]] = {
        "auto": images.Image,
        "tgp": images.TGPImage,
        "sixel": images.SixelImage,
        "halfcell": images.HalfcellImage,
        "unicode": images.UnicodeImage,
    }
    return classes[protocol]


@dataclass
class StatusReceived(Message):
    """A status heartbeat; a newer one for the same service supersedes it in the queue."""

    event: StatusEvent
    gate: FlowGate

    def can_replace(self, message: Message) -> bool:
        if (
            isinstance(message, StatusReceived)
            and message.event.node == self.event.node
            and message.event.service == self.event.service
        ):
            # this one is dropped unhandled: give its room in the gate back
            self.gate.release(self.event)
            return True
        return False


#: Faces (or bad messages) applied per FeedPending: well under a frame's time on a slow machine.
FEED_SLICE = 100


@dataclass
class FeedPending(Message):
    """Faces or bad messages wait in the inbox. One notice stands for any number of them, so
    keys never queue behind thousands of messages; the handler applies a slice of FEED_SLICE
    and posts itself again behind whatever came meanwhile (a key waits for one slice, not a
    whole burst, up to FlowGate's 2,000 events: a key once waited 7.1 s on a loaded machine)."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FeedPending)


@dataclass
class ConnectionChanged(Message):
    """The feed connected, lost the broker, or was refused."""

    event: ConnectionEvent


class MonitorApp(App[int]):
    """facefleet monitor: fleet health, live detections, node detail, alerts."""

    CSS_PATH = "monitor.tcss"
    TITLE = "facefleet monitor"
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the monitor"),
        # the tab labels show 1-4; the footer keeps room for the rest at 80 columns
        Binding(
            "1", "show_tab('fleet')", "Fleet", show=False, id="tab-fleet", tooltip="Fleet health"
        ),
        Binding(
            "2",
            "show_tab('detections')",
            "Detections",
            show=False,
            id="tab-detections",
            tooltip="Live faces, thumbnail, faces per minute",
        ),
        Binding(
            "3", "show_tab('node')", "Node", show=False, id="tab-node", tooltip="The selected node"
        ),
        Binding(
            "4", "show_tab('alerts')", "Alerts", show=False, id="tab-alerts", tooltip="Problems"
        ),
        Binding(
            "tab", "cycle_tab(1)", "Next view", id="next-view", priority=True, tooltip="Next view"
        ),
        Binding(
            "shift+tab",
            "cycle_tab(-1)",
            "Previous view",
            show=False,
            id="previous-view",
            priority=True,
            tooltip="Previous view",
        ),
        Binding("question_mark", "help", "Help", id="help", tooltip="Every key"),
        Binding(
            "p",
            "toggle_pause",
            "Pause",
            id="pause",
            tooltip="Freeze/resume the detections feed (counting goes on)",
        ),
        Binding("slash", "focus_filter", "Filter", id="filter", tooltip="Filter the fleet"),
        Binding("s", "cycle_sort", "Sort", id="sort", tooltip="Change the fleet sort order"),
        Binding("escape", "leave_filter", "Back", show=False, id="leave-filter"),
        Binding("f", "stored_faces", "Stored", id="stored", tooltip="Faces in the store (--store)"),
    ]

    def __init__(
        self,
        config: MonitorConfig,
        *,
        clock: Callable[[], float] = time.time,
        image_class: type[Widget] | None = None,
        cursor_blink: bool = True,
        store: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        #: a facefleet.facestore store (`--store`): the `f` key shows its faces
        self.store = store
        self.clock = clock
        self.model = FleetModel(
            config.expected,
            refused=config.refused,
            clock=clock,
            max_detections=config.max_detections,
            max_thumbnails=config.max_thumbnails,
        )
        self.feed = MonitorFeed(config.mqtt, config.prefix, self._sink)
        self.inbox = Inbox()
        self.image_class = image_class or image_widget_class("unicode")
        self.cursor_blink = cursor_blink
        self._drawn_version = -1
        self._ticks = 0
        #: each tab's view, by tab id (filled by compose)
        self.views: dict[str, View] = {}
        self.redraws = 0
        self.handled = 0

    # --- wiring ---------------------------------------------------------------------------

    def _sink(self, event: FeedEvent) -> bool:
        """Runs on paho's thread (post_message is thread safe)."""
        if isinstance(event, StatusEvent):
            return self.post_message(StatusReceived(event, self.feed.gate))
        if isinstance(event, ConnectionEvent):
            return self.post_message(ConnectionChanged(event))
        if self.inbox.put(event):
            self.post_message(FeedPending())
        return True

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="connection")
        self.views = {
            "fleet": FleetView(id="fleet-view", cursor_blink=self.cursor_blink),
            "detections": DetectionsView(self.image_class(id="thumbnail"), id="detections-view"),
            "node": NodeView(id="node-view"),
            "alerts": AlertsView(id="alerts-view"),
        }
        with TabbedContent(id="tabs", initial="fleet"):
            for key, tab in enumerate(TABS, start=1):
                with TabPane(f"{tab.capitalize()} [{key}]", id=tab):
                    yield self.views[tab]
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.config.broker_label
        for note in self.config.notes:  # said before the UI took the screen: keep them
            self.model.log.append(AlertLogEntry(self.clock(), "info", "", note))
            self.notify(note, title="before the monitor started", timeout=10)
        self.model.evaluate()
        self.redraw(force=True)
        self.set_interval(1 / self.config.refresh_hz, self._tick, name="redraw")
        self.feed.start()

    def on_unmount(self) -> None:
        self.feed.stop()

    # --- feed messages: update the model only ---------------------------------------------

    def on_status_received(self, message: StatusReceived) -> None:
        message.gate.release(message.event)
        self.handled += 1
        self.model.apply(message.event)

    def on_feed_pending(self, message: FeedPending) -> None:
        events, more = self.inbox.drain(FEED_SLICE)
        if more:
            self.post_message(FeedPending())
        for event in events:
            self.feed.gate.release(event)
            self.model.apply(event)
        self.handled += len(events)

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if not self.is_running:  # the app is closing: its widgets are going
            return
        self.model.apply(message.event)
        self.model.evaluate()  # the broker alert appears now, not at the next tick
        self._draw_connection()  # rare and important: show it now

    # --- redraw on a timer ----------------------------------------------------------------

    def _tick(self) -> None:
        # App.is_running turns false first thing on shutdown, before the widgets go one by one
        # (probing one widget raced: #tabs still there, #connection already gone)
        if not self.is_running:
            return
        shed = self.feed.gate.take_shed()
        if shed:
            for status in shed.statuses.values():
                self.model.apply(status)
            self.model.apply_shed(shed.faces, shed.errors)
        self._ticks += 1
        self.model.evaluate()
        # ages and staleness move with the clock: redraw once a second even when idle
        self.redraw(force=self._ticks % max(1, round(self.config.refresh_hz)) == 0)

    def redraw(self, *, force: bool = False) -> None:
        if not force and self.model.version == self._drawn_version:
            return
        self._drawn_version = self.model.version
        self.redraws += 1
        now = self.clock()
        self._draw_connection()
        # only the visible view redraws; switching tabs redraws the new one at once
        self.views[self.query_one("#tabs", TabbedContent).active].redraw(self.model, now)
        alerts = len(self.model.active)
        self.query_one("#tabs", TabbedContent).get_tab("alerts").label = (
            f"Alerts ({alerts}) [4]" if alerts else "Alerts [4]"
        )

    def _draw_connection(self) -> None:
        conn = self.model.connection
        label = self.config.broker_label
        texts = {
            "connecting": f"◌ connecting to {label} …",
            "connected": f"● connected to {label}",
            "reconnecting": f"◌ broker {label} lost: reconnecting …",
            "unreachable": f"✖ {label} unreachable: {conn.detail.split(': ', 1)[-1]} (retrying)",
            "refused": f"✖ {label} refused the monitor: {conn.detail.split(': ', 1)[-1]}"
            " (retrying)",
            "closed": f"○ disconnected from {label}",
        }
        c = self.model.counters
        text = (
            f" {texts.get(conn.state, conn.state)} · {len(self.model.nodes)} nodes · "
            f"{c.faces} faces · {c.statuses} heartbeats · {c.errors} bad"
        )
        if c.shed:
            text += f" · {c.shed} counted only (UI behind)"
        if self.model.paused:
            text += " · ▌▌ PAUSED (p)"
        widget = self.query_one("#connection", Static)
        widget.update(text)
        widget.set_class(conn.state != "connected", "trouble")
        widget.set_class(self.model.paused, "paused")

    # --- actions --------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stored_faces":
            return self.store is not None
        return True

    def action_stored_faces(self) -> None:
        from facefleet_monitor.store_view import StoredFacesScreen

        self.push_screen(StoredFacesScreen(self.store, self.image_class))

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab
        self.redraw(force=True)
        self.views[tab].focus_main_table()

    def action_cycle_tab(self, step: int) -> None:
        active = self.query_one("#tabs", TabbedContent).active
        self.action_show_tab(TABS[(TABS.index(active) + step) % len(TABS)])

    def action_help(self) -> None:
        keys = [
            (
                binding.key_display or self.get_key_display(binding),
                binding.tooltip or binding.description,
            )
            for binding in self.BINDINGS
            if isinstance(binding, Binding)
            and binding.action != "leave_filter"
            and self.check_action(binding.action, ()) is not False  # f without --store
        ]
        self.push_screen(HelpScreen(keys + list(WIDGET_KEYS)))

    def action_toggle_pause(self) -> None:
        self.model.set_paused(not self.model.paused)
        self.notify(
            "feed paused: the detections list is frozen" if self.model.paused else "feed resumed",
            timeout=2,
        )
        self.redraw()

    def action_focus_filter(self) -> None:
        self.action_show_tab("fleet")
        self.query_one(FleetView).focus_filter()

    def action_leave_filter(self) -> None:
        self.query_one(FleetView).focus_main_table()

    def action_cycle_sort(self) -> None:
        self.query_one(FleetView).cycle_sort()

    def show_node(self, name: str) -> None:
        self.query_one(NodeView).node = name
        self.action_show_tab("node")

    # --- what the views ask for -----------------------------------------------------------

    @on(View.Changed)
    def _view_changed(self, message: View.Changed) -> None:
        self.redraw(force=True)

    @on(FleetView.NodeChosen)
    def _node_chosen(self, message: FleetView.NodeChosen) -> None:
        self.show_node(message.node)

    @on(DetectionsView.ThumbnailFailed)
    def _thumbnail_failed(self, message: DetectionsView.ThumbnailFailed) -> None:
        self.model.note_thumbnail_error(message.face_id, message.node, message.reason)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.redraw(force=True)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for tab in TABS:
            yield SystemCommand(
                f"Show {tab}", f"Switch to the {tab} view", lambda t=tab: self.action_show_tab(t)
            )
        yield SystemCommand(
            "Pause/resume feed", "Freeze or resume the detections list", self.action_toggle_pause
        )
        yield SystemCommand("Sort fleet", "Change the fleet sort order", self.action_cycle_sort)
        for name in sorted(self.model.nodes):
            yield SystemCommand(
                f"Node {name}",
                f"Show the detail of {name}",
                lambda n=name: self.show_node(n),
                discover=False,
            )
