"""`facefleet evaluate`: the truth format, the verdicts, and the targets on the shared clip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from facefleet.detector.evaluation import CropRecord, judge, read_truth, score_crops
from facefleet.shared import YUNET_MODEL
from tests.helpers import require_shared
from tests.support import ROOT

CLIP_TRUTH = ROOT / "tests" / "data" / "short_hamilton_clip.truth.toml"
TRUTH = """
version = 1
[[person]]
name = "walker"
[[person.segment]]
usable = true
keys = [[0, 0, 0, 100, 100], [10, 100, 0, 100, 100]]
[[person.segment]]
usable = false
keys = [[20, 300, 0, 100, 100]]
[[person]]
name = "glimpse"
[[person.segment]]
usable = true
keys = [[0, 400, 300, 50, 50], [5, 400, 300, 50, 50]]
"""


def truth(tmp_path: Path, text: str = TRUTH) -> Path:
    path = tmp_path / "truth.toml"
    path.write_text(text)
    return path


def test_boxes_are_interpolated_between_keyframes(tmp_path: Path) -> None:
    walker, glimpse = read_truth(truth(tmp_path))
    assert walker.at(5) == ((50, 0, 100, 100), True)
    assert walker.at(15) is None
    assert walker.at(20) == ((300, 0, 100, 100), False)
    assert walker.usable_frames == 11 and glimpse.usable_frames == 6


def test_verdicts(tmp_path: Path) -> None:
    persons = read_truth(truth(tmp_path))
    assert judge(persons, CropRecord(1, 5, (55, 5, 95, 95), 0.9))[:2] == ("ok", "walker")
    assert judge(persons, CropRecord(1, 20, (300, 0, 100, 100), 0.9))[:2] == ("unusable", "walker")
    assert judge(persons, CropRecord(2, 5, (500, 0, 80, 80), 0.9))[:2] == ("non-face", "")
    assert judge(persons, CropRecord(2, 15, (100, 0, 100, 100), 0.9))[:2] == ("non-face", "")


def test_the_report_counts_persons_and_crops(tmp_path: Path) -> None:
    persons = read_truth(truth(tmp_path))
    crops = [
        CropRecord(1, 3, (30, 0, 100, 100), 0.9),
        CropRecord(3, 8, (80, 0, 100, 100), 0.9),
        CropRecord(4, 20, (300, 0, 100, 100), 0.9),
        CropRecord(5, 2, (600, 300, 30, 30), 0.9),
    ]
    report = score_crops(persons, crops, fps=10.0)  # walker usable 1.1 s, glimpse 0.6 s
    assert report["persons"] == 2 and report["persons_required"] == 1
    assert report["persons_stored"] == 1 and report["required_missed"] == []
    assert report["crops"] == 4 and report["non_faces"] == 1 and report["unusable"] == 1
    assert report["crops_per_stored_person"] == 3.0
    assert [v["verdict"] for v in report["verdicts"]] == ["ok", "ok", "unusable", "non-face"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 2", "version must be 1"),
        ("version = 1", "no [[person]]"),
        ("version = 1\n[[person]]\nname = 'a'", "no segment"),
        ("version = 1\n[[person]]\n[[person.segment]]\nkeys = [[0, 1, 1, 5, 5]]", "usable"),
        (
            "version = 1\n[[person]]\n[[person.segment]]\nusable = true\nkeys = [[3, 1, 1, 5, 5], "
            "[1, 1, 1, 5, 5]]",
            "increasing order",
        ),
        ("version = 1\n[[person]]\n[[person.segment]]\nusable = true\nkeys = [[0, 1]]", "keys"),
        ("version = [", "not valid TOML"),
    ],
)
def test_bad_truth_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"truth\.toml") as error:
        read_truth(truth(tmp_path, text))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(
    sys.version_info < (3, 10),
    reason="`facefleet evaluate` needs Python 3.10; on 3.9 (JetPack 5 edges, make test-py39) it"
    " says so in one line, and only detector, logger, forwarder and detect run",
)
def test_the_command_exits_2_with_one_line_on_a_bad_truth_file(tmp_path: Path) -> None:
    video = tmp_path / "frames"
    video.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "evaluate", str(video), "--truth",
         str(truth(tmp_path, "version = 7"))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "version must be 1" in result.stderr


def test_the_shipped_truth_file_parses() -> None:
    persons = read_truth(CLIP_TRUTH)
    assert len(persons) == 16
    assert sum(1 for p in persons if p.usable_frames >= 30) == 4


def test_targets_on_the_shared_clip(tmp_path: Path) -> None:
    """The issue's targets, with the default configuration: no crop of a non-face, none below
    the usability floor, every person usable for a second stored, <= 1.3 crops each."""
    clip = require_shared("data", "videos", "short_hamilton_clip.mp4")
    model = require_shared("models", YUNET_MODEL)
    config = tmp_path / "detector.toml"
    config.write_text(f'[detection]\nmodel = "{model}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "facefleet", "evaluate", str(clip), "--truth", str(CLIP_TRUTH),
         "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["frames"] == 275
    assert report["non_faces"] == 0, report["verdicts"]
    assert report["unusable"] == 0, report["verdicts"]
    assert report["required_missed"] == [], report["verdicts"]
    assert report["persons_stored"] >= report["persons_required"] == 4
    assert report["crops_per_stored_person"] <= 1.3
    assert sum(report["held_back"].values()) > 0  # the gate did hold tracks back
