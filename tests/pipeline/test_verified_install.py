"""The verified install, with the roles' own commands and real pip: a
wheelhouse sealed as the controller seals it (`facefleet wheelhouse --seal`) installs in pip's
hash-checking mode from the pinned pip wheel; a changed, missing or unlisted-by-the-controller
file is refused in one line naming it, by the hosts' check and, on its own, by pip; the model
copy's check refuses bytes that are not the controller's. The lab test (a tampered wheel on a
host, the previous release still running) is in tests/fleet/test_rollout.py.

The wheels besides pip are small ones made here (pip installs them like any other); pip itself
is the pinned wheel of constraints.txt, downloaded once (pip's cache keeps it).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from facefleet.wheelhouse import seal
from tests.support import ROOT

pytestmark = [pytest.mark.slow]

ROLES = ROOT / "roles"
VERIFY_PY = yaml.safe_load((ROLES / "facefleet/vars/main.yml").read_text())[
    "_facefleet_verify_wheelhouse_py"
]
PIP_PIN = re.search(r"^pip==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)


def _task(tasks_file: str, name: str) -> dict[str, Any]:
    """The task of a roles' tasks file whose name starts with `name` (blocks searched too)."""

    def walk(tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for task in tasks:
            yield task
            yield from walk(task.get("block", []))

    tasks = yaml.safe_load((ROLES / tasks_file).read_text())
    return next(t for t in walk(tasks) if t.get("name", "").startswith(name))


def _argv(tasks_file: str, name: str) -> list[str]:
    """The argv of a command task with the check script filled in, the rest left as it is."""
    argv = _task(tasks_file, name)["ansible.builtin.command"]["argv"]
    return [VERIFY_PY if "_facefleet_verify_wheelhouse_py" in a else a for a in argv]


CHECK = _argv("facefleet_service/tasks/wheelhouse.yml", "Check the unpacked wheelhouse")
UNPACK = _argv("facefleet_service/tasks/wheelhouse.yml", "Unpack the offline wheelhouse")
INSTALL_SH = _task("facefleet_service/tasks/release.yml", "Install facefleet and its")["vars"][
    "_facefleet_service_install_sh"
]
MODEL_VALIDATE = _task("detector/tasks/install.yml", "Install the model")["ansible.builtin.copy"][
    "validate"
]


def _wheel(directory: Path, name: str, version: str, requires: list[str], build: str = "") -> Path:
    """An installable pure-Python wheel: a module `name` with VERSION and BUILD, its metadata."""
    dist = f"{name}-{version}.dist-info"
    extras = sorted({m.group(1) for m in re.finditer(r"extra == '(\w+)'", " ".join(requires))})
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\nBUILD = {build!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Provides-Extra: {extra}\n" for extra in extras)
        + "".join(f"Requires-Dist: {line}\n" for line in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def pip_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hosts' installer: the pip wheel constraints.txt pins."""
    assert PIP_PIN, "constraints.txt pins pip"
    dest = tmp_path_factory.mktemp("pip")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "--dest", str(dest), f"pip=={PIP_PIN.group(1)}"],
        check=True,
        timeout=300,
    )  # fmt: skip
    return next(dest.glob("pip-*.whl"))


class Wheelhouse:
    """A sealed wheelhouse as a host gets it: facefleet (extra opencv), two dependencies, pip."""

    def __init__(self, root: Path, pip_wheel: Path) -> None:
        self.dir = root / "0.1.0"
        self.dir.mkdir()
        self.pip_wheel = pip_wheel
        self.facefleet(build="one")
        _wheel(self.dir, "tinydep", "1.0", [])
        _wheel(self.dir, "extradep", "2.0", [])
        (self.dir / pip_wheel.name).write_bytes(pip_wheel.read_bytes())
        (self.dir / "constraints.txt").write_text(f"pip=={PIP_PIN.group(1) if PIP_PIN else ''}\n")
        self.seal()

    def facefleet(self, build: str) -> None:
        requires = ["tinydep>=1", "extradep==2.0; extra == 'opencv'"]
        _wheel(self.dir, "facefleet", "0.1.0", requires, build=build)

    def seal(self) -> None:
        wheel = self.dir / "facefleet-0.1.0-py3-none-any.whl"
        self.sums = seal(self.dir, "x86_64", "3.11.2", [f"{wheel}[opencv]", "pip"])

    def check(self, marker: str = "tarsum") -> subprocess.CompletedProcess[str]:
        """The hosts' check of an unpacked wheelhouse (marked unpacked from tar `marker`)."""
        (self.dir / f".unpacked-{marker}").write_text(f"{marker}\n")
        return _check(self.dir, self.sums["manifest"], f".unpacked-{marker}")

    def install(self, venv: Path, requirements: str) -> subprocess.CompletedProcess[str]:
        """The hosts' install of the virtualenv, `--no-index` as from the offline wheelhouse."""
        if not venv.exists():
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        pip = self.dir / self.pip_wheel.name / "pip"
        checksum = self.sums["requirements"][requirements]
        return _sh(INSTALL_SH, venv, pip, self.dir / requirements, checksum, "--no-index")


def _check(where: Path, manifest: str, marker: str) -> subprocess.CompletedProcess[str]:
    """The check task's command as the role runs it (python3 and the script, then its args)."""
    assert CHECK[:2] == ["python3", "-c"] and CHECK[3:5] == [
        "{{ _facefleet_host_wheelhouse }}",
        "{{ _facefleet_seal.manifest }}",
    ]
    return _run_argv([*CHECK[:3], str(where), manifest, CHECK[5], marker])


def _unpack(
    tar: Path, where: Path, tar_sum: str, manifest: str
) -> subprocess.CompletedProcess[str]:
    assert UNPACK[:2] == ["sh", "-ec"] and UNPACK[-1] == VERIFY_PY
    return _run_argv([*UNPACK[:4], str(tar), str(where), tar_sum, manifest, VERIFY_PY])


def _sh(script: str, *args: object) -> subprocess.CompletedProcess[str]:
    return _run_argv(["sh", "-ec", script, "sh", *map(str, args)])


def _run_argv(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin"},  # no PIP_* of the machine running the tests
    )


@pytest.fixture
def wheelhouse(tmp_path: Path, pip_wheel: Path) -> Wheelhouse:
    return Wheelhouse(tmp_path, pip_wheel)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(venv: Path, code: str) -> str:
    return subprocess.run(
        [str(venv / "bin/python"), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_sealed_wheelhouse_checks_and_installs_in_hash_checking_mode(
    wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    checked = wheelhouse.check()
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
    absent = _check(wheelhouse.dir, wheelhouse.sums["manifest"], ".unpacked-another-tar")
    assert (absent.returncode, absent.stdout) == (0, "absent\n")  # not unpacked yet: copy it

    venv = tmp_path / "venv"
    installed = wheelhouse.install(venv, "requirements-opencv.txt")
    assert installed.returncode == 0, installed.stderr
    assert "Successfully installed extradep-2.0 facefleet-0.1.0 tinydep-1.0" in installed.stdout
    checksum = wheelhouse.sums["requirements"]["requirements-opencv.txt"]
    assert [p.name for p in venv.glob(".installed-*")] == [f".installed-{checksum}"]
    assert _run(venv, "import facefleet, extradep; print(facefleet.BUILD)") == "one"

    plain = wheelhouse.install(tmp_path / "plain", "requirements.txt")
    assert plain.returncode == 0, plain.stderr
    assert "Successfully installed facefleet-0.1.0 tinydep-1.0" in plain.stdout


def test_a_rebuilt_wheel_of_the_same_version_replaces_the_installed_one(
    wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    assert wheelhouse.install(venv, "requirements.txt").returncode == 0
    first = wheelhouse.sums["requirements"]["requirements.txt"]
    wheelhouse.facefleet(build="two")
    wheelhouse.seal()
    second = wheelhouse.sums["requirements"]["requirements.txt"]
    assert second != first  # a new marker: the role installs again
    again = wheelhouse.install(venv, "requirements.txt")
    assert again.returncode == 0, again.stderr
    assert "Successfully installed facefleet-0.1.0" in again.stdout
    assert "tinydep" not in again.stdout.splitlines()[-1]  # unchanged: kept
    assert _run(venv, "import facefleet; print(facefleet.BUILD)") == "two"
    assert [p.name for p in venv.glob(".installed-*")] == [f".installed-{second}"]


def test_a_changed_wheel_is_refused_in_one_line_naming_it(wheelhouse: Wheelhouse) -> None:
    wheel = wheelhouse.dir / "tinydep-1.0-py3-none-any.whl"
    built = _sha256(wheel)
    with wheel.open("ab") as stream:
        stream.write(b"tampered")
    refused = wheelhouse.check()
    assert refused.returncode == 3
    assert refused.stderr == (
        f"wheelhouse file tinydep-1.0-py3-none-any.whl of 0.1.0 does not match the controller's "
        f"build (sha256 {_sha256(wheel)}, built {built}); refusing the release\n"
    )

    wheel.unlink()
    missing = wheelhouse.check()
    assert missing.returncode == 3
    assert "tinydep-1.0-py3-none-any.whl of 0.1.0 does not match the controller's build " in (
        missing.stderr
    )
    assert f"(missing, built {built}); refusing the release\n" in missing.stderr


def test_a_manifest_changed_on_the_host_is_refused(wheelhouse: Wheelhouse) -> None:
    """Whoever changes a wheel can rewrite SHA256SUMS too: the controller's sum of it decides."""
    wheel = wheelhouse.dir / "tinydep-1.0-py3-none-any.whl"
    with wheel.open("ab") as stream:
        stream.write(b"tampered")
    manifest = wheelhouse.dir / "SHA256SUMS"
    lines = [
        f"{_sha256(wheel)}  {wheel.name}" if line.endswith(f"  {wheel.name}") else line
        for line in manifest.read_text().splitlines()
    ]
    manifest.write_text("\n".join(lines) + "\n")
    refused = wheelhouse.check()
    assert refused.returncode == 3
    assert refused.stderr == (
        "wheelhouse file SHA256SUMS of 0.1.0 is not the one the controller wrote; "
        "refusing the release\n"
    )


def test_pip_alone_refuses_a_changed_wheel(wheelhouse: Wheelhouse, tmp_path: Path) -> None:
    """Without the manifest check in front, hash-checking mode still installs nothing changed."""
    with (wheelhouse.dir / "tinydep-1.0-py3-none-any.whl").open("ab") as stream:
        stream.write(b"tampered")
    venv = tmp_path / "venv"
    refused = wheelhouse.install(venv, "requirements.txt")
    assert refused.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in refused.stderr
    assert "tinydep" in refused.stderr
    assert not list(venv.glob(".installed-*"))
    assert not list(venv.glob("lib/python*/site-packages/tinydep"))


def test_the_unpack_checks_before_it_marks(wheelhouse: Wheelhouse, tmp_path: Path) -> None:
    def pack(tar: Path) -> None:
        with tarfile.open(tar, "w") as archive:
            for path in sorted(wheelhouse.dir.iterdir()):
                archive.add(path, arcname=path.name)

    good, target = tmp_path / "good.tar", tmp_path / "host"
    pack(good)
    target.mkdir()
    (target / ".unpacked-oldsum").write_text("another build of the version, unpacked before\n")
    unpacked = _unpack(good, target, "goodsum", wheelhouse.sums["manifest"])
    assert unpacked.returncode == 0, unpacked.stderr
    assert [p.name for p in target.glob(".unpacked-*")] == [".unpacked-goodsum"]
    assert not good.exists()

    with (wheelhouse.dir / "extradep-2.0-py3-none-any.whl").open("ab") as stream:
        stream.write(b"tampered")
    bad, target = tmp_path / "bad.tar", tmp_path / "host2"
    pack(bad)
    target.mkdir()
    refused = _unpack(bad, target, "badsum", wheelhouse.sums["manifest"])
    assert refused.returncode == 3
    assert refused.stderr.startswith("wheelhouse file extradep-2.0-py3-none-any.whl of host2 ")
    assert not (target / ".unpacked-badsum").exists()


def test_the_model_copy_accepts_only_the_controllers_bytes(tmp_path: Path) -> None:
    """The copy module's validate command, run as Ansible runs it (split, no shell)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the controller's model")
    command = MODEL_VALIDATE.replace("{{ _detector_model_sha256 }}", _sha256(model))

    def validate(path: Path) -> int:
        argv = shlex.split(command % str(path))
        return subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode

    assert validate(model) == 0
    model.write_bytes(b"another model")
    assert validate(model) != 0
