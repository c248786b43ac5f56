"""Typed, immutable service configuration built once from a TOML file plus environment overrides.

Every service has a frozen dataclass tree (see the `settings` classes in each service package).
`load()` reads the TOML file Ansible renders, applies `FACEFLEET_<SECTION>__<KEY>` environment
overrides (`FACEFLEET_<KEY>` for top-level keys), checks every value against the field's type
and choices, and raises ConfigError with one line naming the file, the key and the problem.

The override rule: every `FACEFLEET_*` variable is a config override, except the tools' own
variables (`TOOL_VARIABLES`, `TOOL_PREFIXES`: the test data directory, the lab, the fault suite
and the benchmarks). An override naming no setting of the service is an error that names the
variable, and so is a bad value that came from a variable. TOML values must have the setting's
type (`width = "640"` is an error); only values from the environment, which are always strings,
are converted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 hosts only
    import tomli as tomllib

ENV_PREFIX = "FACEFLEET_"
#: FACEFLEET_* variables that are not config overrides: where the test data lives, and the
#: settings of the lab, the fault suite and the benchmarks (exported in the operator's shell, so
#: every service started from it sees them).
TOOL_VARIABLES = ("FACEFLEET_SHARED",)
TOOL_PREFIXES = ("FACEFLEET_LAB_", "FACEFLEET_FAULT_", "FACEFLEET_BENCH_")
SECRET_MARKERS = ("password", "secret", "token", "key_material")

T = TypeVar("T")
#: `Optional[int]` and (Python 3.10+) `int | None`
_UNION_ORIGINS = (typing.Union, getattr(types, "UnionType", typing.Union))


class ConfigError(Exception):
    """A configuration problem, phrased as one line an operator can act on."""


class EnvValue(str):
    """A setting's value taken from an environment variable: a string that remembers the
    variable, so type conversion is allowed and an error names the variable, not the file."""

    variable: str

    def __new__(cls, value: str, variable: str) -> EnvValue:
        text = super().__new__(cls, value)
        text.variable = variable
        return text


def is_config_variable(name: str) -> bool:
    """True for the FACEFLEET_* variables that override config keys (see the module doc)."""
    return (
        name.startswith(ENV_PREFIX)
        and name not in TOOL_VARIABLES
        and not name.startswith(TOOL_PREFIXES)
    )


def load(cls: type[T], path: str | Path | None, env: Mapping[str, str] | None = None) -> T:
    """Build `cls` from the TOML file at `path` (None: defaults only) and the environment."""
    data: dict[str, Any] = {}
    where = str(path) if path else "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{where}: file not found") from None
        except PermissionError:
            raise ConfigError(f"{where}: permission denied") from None
        except IsADirectoryError:
            raise ConfigError(f"{where}: is a directory, not a config file") from None
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                f"{exc.start}); TOML files are UTF-8"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    apply_env(cls, data, os.environ if env is None else env)
    return build(cls, data, where)


def apply_env(cls: type[Any], data: dict[str, Any], env: Mapping[str, str]) -> None:
    """Overlay FACEFLEET_* variables onto the parsed file, in place; a variable that names no
    setting of `cls` is a ConfigError naming it."""
    fields = {f.name for f in dataclasses.fields(cls)}
    sections = {name for name in fields if _is_section(cls, name)}
    for name, value in sorted(env.items()):
        if not is_config_variable(name):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        section, _, field = key.partition("__") if "__" in key else ("", "", key)
        if section:
            if section not in sections:
                known = ", ".join(sorted(sections)) or "none"
                raise ConfigError(
                    f"environment variable {name}: no section [{section}] "
                    f"(sections: {known}; top-level keys are FACEFLEET_<KEY>)"
                )
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"environment variable {name}: {section} is not a table")
            section_fields = {
                f.name for f in dataclasses.fields(typing.get_type_hints(cls)[section])
            }
            if field not in section_fields:
                raise ConfigError(f"environment variable {name}: [{section}] has no key {field}")
            table[field] = EnvValue(value, name)
        elif field in fields and field not in sections:
            data[field] = EnvValue(value, name)
        else:
            keys = ", ".join(f"{ENV_PREFIX}{k.upper()}" for k in sorted(fields - sections))
            hint = (
                f"; [{field}] is a section: FACEFLEET_{field.upper()}__<KEY>"
                if field in sections
                else ""
            )
            raise ConfigError(
                f"environment variable {name}: no top-level setting {field} "
                f"(top-level keys: {keys}{hint})"
            )


def _is_section(cls: type[Any], name: str) -> bool:
    hint = field_types(cls)[name]
    return dataclasses.is_dataclass(hint)


def field_types(cls: type[Any]) -> dict[str, Any]:
    """The evaluated annotations of a settings dataclass.

    Python 3.9 (JetPack 5 edges) cannot evaluate `X | None` in an annotation string, so there a
    field whose annotation fails is split at its top-level `|` and rebuilt as a typing.Union.
    """
    try:
        return typing.get_type_hints(cls)
    except TypeError:  # Python 3.9 evaluating `X | Y`; any other TypeError recurs below
        return evaluate_annotations(cls)


def evaluate_annotations(cls: type[Any]) -> dict[str, Any]:
    """typing.get_type_hints for our settings classes, with `X | Y` as typing.Union."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        namespace = vars(sys.modules[klass.__module__])
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            parts = _split_union(annotation) if isinstance(annotation, str) else [annotation]
            # the annotations of our own settings modules, as typing.get_type_hints does
            types_ = [eval(part, namespace) if isinstance(part, str) else part for part in parts]  # noqa: S307
            hints[name] = typing.Union[tuple(types_)] if len(types_) > 1 else types_[0]
    return hints


def _split_union(annotation: str) -> list[str]:
    """`int | None` -> ["int", "None"]; a `|` inside brackets stays where it is."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(annotation):
        depth += (char in "[(") - (char in "])")
        if char == "|" and depth == 0:
            parts.append(annotation[start:index].strip())
            start = index + 1
    return [*parts, annotation[start:].strip()]


def build(
    cls: type[T], data: Mapping[str, Any], where: str, path: str = "", base: T | None = None
) -> T:
    """Check `data` against the dataclass `cls`; missing keys keep the values of `base` (or
    the field defaults), so a section's own defaults (e.g. the cloud broker's TLS port) hold."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {path or 'top level'}: expected a table")
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        dotted = ", ".join(f"{path}{name}" for name in unknown)
        raise ConfigError(f"{where}: unknown setting {dotted}")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            section_base: Any = None
            if base is not None:
                section_base = getattr(base, name)
            elif spec.default_factory is not dataclasses.MISSING:
                section_base = spec.default_factory()
            values[name] = build(hint, data.get(name, {}), where, f"{path}{name}.", section_base)
        elif name in data:
            value = data[name]
            try:
                values[name] = coerce(hint, value)
            except (TypeError, ValueError) as exc:
                if isinstance(value, EnvValue):
                    raise ConfigError(
                        f"environment variable {value.variable} ({path}{name}): {exc}"
                    ) from None
                raise ConfigError(f"{where}: {path}{name}: {exc}") from None
        elif base is not None:
            values[name] = getattr(base, name)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        variables = sorted(v.variable for v in data.values() if isinstance(v, EnvValue))
        source = f"{where} with {', '.join(variables)}" if variables else where
        raise ConfigError(f"{source}: {path.rstrip('.') or 'config'}: {exc}") from None


def coerce(hint: Any, value: Any) -> Any:
    """Check (and, for strings from the environment, convert) one value against its type."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))} (got {value!r})")
        return value
    if origin in _UNION_ORIGINS:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return coerce(args[0], value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, EnvValue):
            value = [EnvValue(part.strip(), value.variable) for part in value.split(",")]
            value = [part for part in value if part]
        if not isinstance(value, list):
            raise ValueError(f"expected a list (got {_shown(value)})")
        return tuple(coerce(item, v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, EnvValue) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, EnvValue) and value.lower() in ("false", "0", "no", "off"):
            return False
        expected = "true or false" if isinstance(value, EnvValue) else "a boolean (true or false)"
        raise ValueError(f"expected {expected} (got {_shown(value)})")
    if hint in (int, float):
        kind = "an integer" if hint is int else "a number"
        allowed: tuple[type, ...] = (int,) if hint is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, (*allowed, EnvValue)):
            raise ValueError(f"expected {kind} (got {_shown(value)})")
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"expected {kind} (got {_shown(value)})") from None
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string (got {_shown(value)})")
        return str(value)
    raise TypeError(f"unsupported setting type {hint!r}")


def _shown(value: Any) -> str:
    """A value as the operator wrote it: a TOML string in quotes, so `"640"` reads as text."""
    if isinstance(value, EnvValue):
        return repr(str(value))
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    return repr(value)


def redacted(config: Any) -> dict[str, Any]:
    """The config as a dict with secrets masked, for the start-up log line."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out[field.name] = redacted(value)
        elif value and any(m in field.name for m in SECRET_MARKERS) and "file" not in field.name:
            out[field.name] = "***"
        else:
            out[field.name] = value
    return out


def read_secret(path: str) -> str:
    """Read a secret from a file (mode 0600, written by Ansible); strips the trailing newline."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read secret: {exc.strerror}") from None


def positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive (got {value})")


def dump_toml(data: Mapping[str, Any]) -> str:
    """Render a config mapping (scalars and one level of tables) as TOML, for the demo and
    tests; Ansible renders the same files from templates."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        raise TypeError(f"cannot write {value!r} as TOML")

    top = [f"{k} = {scalar(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    tables = [
        f"\n[{name}]\n" + "\n".join(f"{k} = {scalar(v)}" for k, v in table.items())
        for name, table in data.items()
        if isinstance(table, Mapping)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"
