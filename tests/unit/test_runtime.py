"""The service runtime and the `facefleet` registry, without brokers."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from facefleet import cli, runtime
from facefleet.config import ConfigError
from facefleet.mqtt import MqttSettings
from facefleet.processor.settings import ProcessorConfig
from facefleet.runtime import Link, Step, Worker


class _Service:
    """Records what the runtime does with it; its main loop fails."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.links: Sequence[Link] = ()
        self.workers = [Worker("work", lambda: self.done.append("worked"), join_timeout_s=5)]

    def main_loop(self) -> None:
        self.workers[0].join()
        raise RuntimeError("the main loop failed")

    def shutdown_steps(self) -> Sequence[Step]:
        return [lambda: self.done.append("first"), lambda: self.done.append("second")]


def test_every_shutdown_step_runs_in_order_however_the_main_loop_ends() -> None:
    service = _Service()
    with pytest.raises(RuntimeError, match="the main loop failed"):
        runtime.lifecycle(service)
    assert service.done == ["worked", "first", "second"]


@pytest.mark.parametrize("service", cli.SERVICES, ids=lambda s: s.name)
def test_each_registry_entry_loads_its_service_spec(service: cli.ServiceCommand) -> None:
    spec = service.load()
    assert spec.config_class.__name__.lower() == f"{service.name}config"


def test_the_check_names_a_missing_certificate_file_of_any_broker(tmp_path: Path) -> None:
    spec = cli.SERVICES[-1].load()
    missing = tmp_path / "ca.crt"
    cfg = ProcessorConfig(node="cloud-1", mqtt=MqttSettings(tls=True, ca_file=str(missing)))
    with pytest.raises(ConfigError, match=rf"mqtt.ca_file: {missing} does not exist"):
        runtime.check(spec, cfg)
    missing.write_text("")
    assert runtime.check(spec, cfg) == "cloud-1"


def test_facefleet_finds_the_monitor_through_its_entry_point_only() -> None:
    code = (
        "import sys\nfrom facefleet import cli\n"
        "print('facefleet_monitor' in sys.modules)\n"
        "cli.build_parser('monitor')\n"
        "print('facefleet_monitor.cli' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True"]


def test_a_service_command_does_not_look_up_other_commands() -> None:
    code = (
        "import sys\nfrom facefleet import cli\n"
        "cli.build_parser('logger').parse_args(['logger', '--check'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('facefleet_monitor', 'cv2'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_worker_is_a_daemon_thread_joined_with_its_timeout() -> None:
    release = threading.Event()
    worker = Worker("waits", release.wait, join_timeout_s=0.05)
    worker.thread.start()
    worker.join()
    assert worker.thread.daemon and worker.thread.is_alive()
    release.set()
    worker.thread.join()
