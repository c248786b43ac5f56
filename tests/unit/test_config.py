from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from facefleet import config
from facefleet.detector.settings import DetectorConfig
from facefleet.forwarder.settings import ForwarderConfig
from facefleet.processor.settings import ProcessorConfig


def test_defaults_and_section_defaults_hold(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('node = "edge1"\n[cloud]\nhost = "cloud.example"\n')
    cfg = config.load(ForwarderConfig, path, env={})
    assert cfg.node == "edge1"
    assert (cfg.cloud.host, cfg.cloud.port, cfg.cloud.tls) == ("cloud.example", 8883, True)
    assert cfg.spool.when_full == "drop-oldest"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text("[uplink]\ninflight = 8\n")
    env = {"FACEFLEET_UPLINK__INFLIGHT": "64", "FACEFLEET_NODE": "e2", "FACEFLEET_CLOUD__TLS": "no"}
    cfg = config.load(ForwarderConfig, path, env=env)
    assert (cfg.uplink.inflight, cfg.node, cfg.cloud.tls) == (64, "e2", False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[spool]\nwhen_full = 'sometimes'\n", "spool.when_full: must be one of drop-oldest"),
        ("[spool]\nmax_bytes = 'lots'\n", "spool.max_bytes: expected an integer"),
        ("[uplink]\ninflight = 0\n", "uplink: inflight must be 1..1000"),
        ("[cloud]\nprot = 1\n", "unknown setting cloud.prot"),
        ("node = \n", "not valid TOML"),
    ],
)
def test_bad_values_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message) as info:
        config.load(ForwarderConfig, path, env={})
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[journal]\nmax_bytes = 100000\n", "journal: max_bytes must be at least twice"),
        ("[journal]\nsegment_bytes = 1000\n", "journal: segment_bytes must be at least 65536"),
        ("[journal]\nconfirm_timeout_s = 0\n", "journal: confirm_timeout_s must be at least 1"),
        ("[journal]\npath = ''\n", "journal: path must not be empty"),
    ],
)
def test_bad_journal_settings_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message) as info:
        config.load(DetectorConfig, path, env={})
    assert "\n" not in str(info.value)


def test_s3_needs_a_bucket(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[storage]\nkind = 's3'\n")
    with pytest.raises(config.ConfigError, match="needs a bucket"):
        config.load(ProcessorConfig, path, env={})


def test_secrets_are_redacted() -> None:
    cfg = config.load(ForwarderConfig, None, env={})
    assert config.redacted(cfg)["cloud"]["password_file"] == ""


def test_cli_reports_config_errors_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[spool]\nwhen_full = 'never'\n")
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "forwarder", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "config error" in result.stderr and "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "facefleet", "processor", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    # the edge services run on 3.9 (tests/py39); the processor refuses it in one line
    expected = "file not found" if sys.version_info >= (3, 10) else "needs Python 3.10 or newer"
    assert expected in missing.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[camera]\nwidth = "640"\n', 'camera.width: expected an integer (got the string "640")'),
        (
            '[camera]\nloop = "yes"\n',
            'camera.loop: expected a boolean (true or false) (got the string "yes")',
        ),
        ('[camera]\nfps = "15"\n', 'camera.fps: expected a number (got the string "15")'),
        ("heartbeat_s = true\n", "heartbeat_s: expected a number (got True)"),
    ],
)
def test_toml_strings_are_not_numbers_or_booleans(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(DetectorConfig, path, env={})
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FACEFLEET_CAMRA__SOURCE": "/dev/video0"},
            "environment variable FACEFLEET_CAMRA__SOURCE: no section [camra]",
        ),
        (
            {"FACEFLEET_HEARTBEAT": "5"},
            "environment variable FACEFLEET_HEARTBEAT: no top-level setting heartbeat",
        ),
        (
            {"FACEFLEET_CAMERA__SOURSE": "x"},
            "environment variable FACEFLEET_CAMERA__SOURSE: [camera] has no key sourse",
        ),
        ({"FACEFLEET_CAMERA": "x"}, "[camera] is a section: FACEFLEET_CAMERA__<KEY>"),
        ({"FACEFLEET_INSTANCE": "2"}, "no top-level setting instance"),  # a processor key only
        (
            {"FACEFLEET_CAMERA__WIDTH": "wide"},
            "environment variable FACEFLEET_CAMERA__WIDTH (camera.width): "
            "expected an integer (got 'wide')",
        ),
        (
            {"FACEFLEET_HEARTBEAT_S": "-1"},
            "with FACEFLEET_HEARTBEAT_S: config: heartbeat_s must be positive",
        ),
    ],
)
def test_environment_errors_name_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[camera]\nwidth = 640\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(DetectorConfig, path, env=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_tool_variables_are_not_config_overrides(tmp_path: Path) -> None:
    env = {
        "FACEFLEET_SHARED": "../shared",
        "FACEFLEET_LAB_REUSE": "1",
        "FACEFLEET_FAULT_LOAD_S": "60",
        "FACEFLEET_BENCH_ANYTHING": "x",
        "FACEFLEET_CAMERA__LOOP": "yes",
        "FACEFLEET_NODE": "edge-7",
    }
    cfg = config.load(DetectorConfig, None, env=env)
    assert (cfg.camera.loop, cfg.node) == (True, "edge-7")


def test_the_file_is_blamed_only_for_its_own_values(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[camera]\nwidth = -3\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(DetectorConfig, path, env={"FACEFLEET_NODE": "e1"})
    assert str(info.value).startswith(f"{path}: camera")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory, not a config file"),
        (lambda p: p.write_bytes(b'node = "caf\xe9"\n'), "not UTF-8 text (byte 0xe9 at offset 11)"),
        (lambda p: p.write_text('node = "bad/name"\n'), "node 'bad/name' is not a valid node name"),
    ],
)
def test_unreadable_config_files_give_one_line_and_exit_2(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "detector.toml"
    make(path)
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "detector", "--check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
