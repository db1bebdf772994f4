"""Imports point one way: ila_core ← queue_store ← {collector, forwarder} ← ila_agent.

Read from the source with ``ast`` (every import, also one inside a function), so a convenience
re-export or a lazy import that runs the other way fails here before it can make a package
impossible to import on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each project package may import of the others (itself always).
ALLOWED = {
    "ila_core": set(),
    "queue_store": {"ila_core"},
    "collector": {"ila_core", "queue_store"},
    "forwarder": {"ila_core", "queue_store"},
    "ila_agent": {"ila_core", "queue_store", "collector", "forwarder"},
}
PROJECT = set(ALLOWED) | {"tests", "bench", "ops"}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in PROJECT]
    return found


class TestImportDirection:
    @pytest.mark.parametrize("package", sorted(ALLOWED))
    def test_a_package_imports_only_the_layers_below_it(self, package: str) -> None:
        """No module of a package imports a package above it or beside it."""
        wrong = [
            f"{path.relative_to(ROOT)}:{line} imports {top}"
            for path in sorted((ROOT / package).rglob("*.py"))
            for line, top in project_imports(path)
            if top != package and top not in ALLOWED[package]
        ]
        assert wrong == []

    def test_the_check_sees_a_wrong_import(self, tmp_path: Path) -> None:
        """The reader finds imports at any depth, so the check above can fail."""
        bad = tmp_path / "bad.py"
        bad.write_text("import os\n\ndef f():\n    from ila_agent.config import load_config\n")
        assert project_imports(bad) == [(4, "ila_agent")]

    def test_each_package_imports_on_its_own(self) -> None:
        """Importing a lower package first (in a fresh interpreter) pulls in nothing above it."""
        import subprocess
        import sys

        code = (
            "import sys, ila_core, queue_store.store, collector.sources, forwarder.loop;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ila_agent'))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        assert out.stdout.strip() == "[]"
