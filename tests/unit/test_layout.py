"""The layers' import arrows point one way: nothing below the command line imports it, and the
service never imports its benchmark (only the command line starts it)."""

from __future__ import annotations

import ast
from pathlib import Path

import streaming

PACKAGE = Path(streaming.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_module_imports_the_command_line_and_only_it_starts_the_benchmark() -> None:
    wrong = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        imports = _imports(path)
        if name != "cli.py" and any(i.startswith("streaming.cli") for i in imports):
            wrong[name] = "imports the command line"
        if not name.startswith(("bench/", "cli.py")) and any(
            i.startswith("streaming.bench") for i in imports
        ):
            wrong[name] = "imports the benchmark"
    assert wrong == {}


def test_the_check_sees_an_import() -> None:
    assert "streaming.console.guarded" in _imports(PACKAGE / "cli.py")
