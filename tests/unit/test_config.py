from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facefleet import config
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
