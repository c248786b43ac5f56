"""The facefleet modules the edge services import: the code that must run on Python 3.9.

Follows every `import` statement of the package (also those inside functions) from the
entry points of the detector, logger and forwarder, so the list is computed, not kept by hand.
`python -m tests.edge_modules` prints their file paths (the `make check` version check reads
them); `--roots` prints the entry points instead.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "facefleet"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "apps" / PACKAGE
#: `facefleet <service>` runs cli.main, which imports facefleet.<service>.service by name;
#: `facefleet detect` (cli.PY39_COMMANDS) runs detect_cli.
EDGE_ROOTS = (
    "facefleet.__main__",
    "facefleet.cli",
    "facefleet.detector.detect_cli",
    "facefleet.detector.service",
    "facefleet.logger.service",
    "facefleet.forwarder.service",
)


def module_file(module: str) -> Path | None:
    """The source file of a facefleet module (a package's __init__.py), or None."""
    parts = module.split(".")[1:]
    package_dir = PACKAGE_DIR.joinpath(*parts)
    candidates = [package_dir / "__init__.py"]
    if parts:
        candidates.insert(0, package_dir.with_suffix(".py"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _imported(module: str, path: Path) -> set[str]:
    """Names of the facefleet modules one file imports, with the packages around them."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # `from facefleet import mqtt` imports a module, `from facefleet.x import f` a name
            found.update(f"{base}.{alias.name}" for alias in node.names)
    names = {name for name in found if name.split(".")[0] == PACKAGE and module_file(name)}
    # importing a.b.c runs a/__init__ and a/b/__init__ first
    return names | {
        ".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 1)
    }


def edge_modules(roots: tuple[str, ...] = EDGE_ROOTS) -> dict[str, Path]:
    """Every facefleet module reachable from the roots, by name."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        module = todo.pop()
        path = module_file(module)
        if module in seen or path is None:
            continue
        seen[module] = path
        todo.extend(_imported(module, path) - seen.keys())
    return dict(sorted(seen.items()))


def main(argv: list[str]) -> int:
    modules = edge_modules()
    lines = EDGE_ROOTS if "--roots" in argv else [str(path) for path in modules.values()]
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
