"""`make test`'s closing lines name the tests that failed (a CI log may keep only its tail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.stages import counts, failures


def test_failed_tests_are_named_with_the_first_line_of_why(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "def test_broken(): raise RuntimeError('no broker')\n"
    )
    junit = tmp_path / "junit.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
            f"--junitxml={junit}",
            f"--rootdir={tmp_path}",
        ],
        capture_output=True,
        check=False,
    )
    assert counts(junit) == {"passed": 1, "failed": 2, "skipped": 0}
    assert failures(junit) == [
        "test_sample::test_bad: AssertionError: one is not two",
        "test_sample::test_broken: RuntimeError: no broker",
    ]


def test_a_missing_report_names_nothing(tmp_path: Path) -> None:
    assert failures(tmp_path / "none.xml") == []
