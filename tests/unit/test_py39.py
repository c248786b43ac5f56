"""What keeps the edge code runnable on Python 3.9 (JetPack 5) when the tests run on 3.11.

`make check` runs vermin on the modules tests/edge_modules.py lists; tests/py39 runs the
edge services on a real 3.9. These tests cover what neither sees from here: the list itself,
the 3.9 path of the config loader, and the `X | Y` expressions vermin does not flag.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

import pytest

from facefleet import config
from facefleet.detector.settings import DetectorConfig
from facefleet.forwarder.settings import ForwarderConfig
from facefleet.logger.settings import LoggerConfig
from facefleet.processor.settings import ProcessorConfig
from tests.edge_modules import edge_modules


@dataclass(frozen=True)
class _Sample:
    retries: int | None = None
    names: tuple[str, ...] = ()
    mode: Literal["a", "b"] = "a"
    ratio: float | int = 1.0


def _settings_classes(cls: type) -> list[type]:
    """A config class and every section class below it."""
    found = [cls]
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            assert isinstance(hint, type), name
            found += _settings_classes(hint)
    return found


@pytest.mark.parametrize(
    "root", [DetectorConfig, LoggerConfig, ForwarderConfig, ProcessorConfig, _Sample]
)
def test_the_python_39_annotation_path_reads_every_settings_class_alike(root: type) -> None:
    for cls in _settings_classes(root):
        assert config.evaluate_annotations(cls) == typing.get_type_hints(cls), cls.__name__


def test_unions_from_the_python_39_path_are_coerced_like_optional() -> None:
    hints = config.evaluate_annotations(_Sample)
    assert hints["retries"] == typing.Optional[int]
    assert config.coerce(hints["retries"], "") is None
    # a string converts only when it comes from the environment (TOML strings are refused)
    assert config.coerce(hints["retries"], config.EnvValue("5", "FACEFLEET_RETRIES")) == 5
    with pytest.raises(ValueError, match="expected an integer"):
        config.coerce(hints["retries"], "5")
    assert hints["names"] == tuple[str, ...]


def test_the_edge_module_list_follows_the_imports_of_the_edge_services() -> None:
    modules = edge_modules()
    for needed in (
        "facefleet.cli",
        "facefleet.config",
        "facefleet.contract",
        "facefleet.mqtt",
        "facefleet.service",
        "facefleet.wire",
        "facefleet.detector.service",
        "facefleet.detector.backends",
        "facefleet.forwarder.spool",
        "facefleet.logger.service",
    ):
        assert needed in modules
    for cloud_or_controller in ("facefleet.processor.service", "facefleet.fleet", "facefleet.pki"):
        assert cloud_or_controller not in modules
    assert all(path.is_file() for path in modules.values())


_TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set"}


def _runtime_unions(tree: ast.AST) -> list[int]:
    """Lines where `A | B` of types is evaluated at run time: isinstance/issubclass arguments
    and module-level aliases (annotations are strings under `from __future__ import
    annotations`, so they are fine)."""
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
            and isinstance(node.args[1], ast.BinOp)
            and isinstance(node.args[1].op, ast.BitOr)
        ):
            lines.append(node.lineno)
    for statement in getattr(tree, "body", []):
        if (
            isinstance(statement, ast.Assign)
            and isinstance(statement.value, ast.BinOp)
            and isinstance(statement.value.op, ast.BitOr)
            and any(
                isinstance(side, ast.Subscript)
                or (isinstance(side, ast.Constant) and side.value is None)
                or (isinstance(side, ast.Name) and side.id in _TYPE_NAMES)
                for side in (statement.value.left, statement.value.right)
            )
        ):
            lines.append(statement.lineno)
    return lines


def test_the_edge_code_evaluates_no_type_unions_at_run_time() -> None:
    offenders = [
        f"{path}:{line}"
        for path in edge_modules().values()
        for line in _runtime_unions(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == []


def test_the_union_check_finds_what_it_looks_for() -> None:
    code = (
        "X = int | None\nY = list[str] | Z\ndef f(v):\n    return isinstance(v, int | float)\n"
        "MASK = 1 | 2\nMODE = os.O_CREAT | os.O_WRONLY\n"
    )
    assert sorted(_runtime_unions(ast.parse(code))) == [1, 2, 4]
