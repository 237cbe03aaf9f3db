"""The floors of the house: imports only go down, and importing a module does nothing.

Floors, bottom first (DESIGN §1a): ``etl`` (settings, Kafka helpers) ->
``mappers`` -> ``sinks`` -> ``streams`` -> ``ops`` (operator tooling) ->
``bench``.  A module may import from its own floor or below.  Imports inside
functions and ``TYPE_CHECKING`` blocks count too: a lazy import upward is
still a dependency upward.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"etl": 1, "mappers": 2, "sinks": 3, "streams": 4, "ops": 5, "bench": 6}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``."""
    found = []
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[
                    : len(package) - node.level + (1 if module.endswith("__init__") else 0)
                ]
                name = ".".join([*base, node.module or ""]).strip(".")
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def violations(modules: dict[str, str]) -> list[str]:
    """Every import from a lower floor to a higher one,
    as ``file:line: a (floor) imports b (floor)``.
    """
    problems = []
    for module, source in modules.items():
        own = FLOORS[module.split(".")[0]]
        for line, target in imported_modules(source, module):
            top = target.split(".")[0]
            if top in FLOORS and FLOORS[top] > own:
                problems.append(
                    f"{module}:{line}: "
                    f"{module} (floor {own}) imports {target} (floor {FLOORS[top]})"
                )
    return problems


def test_imports_only_go_down_a_floor() -> None:
    sources = {name: path.read_text() for name, path in project_modules().items()}
    assert len(sources) > 40
    assert violations(sources) == []


def test_the_check_catches_an_upward_import() -> None:
    seeded = {
        "mappers.governance": "from streams import metrics\n",
        "etl.config": "def f():\n    from ops.cli import main\n",
        "sinks.duckdb": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import streams.stages\n",
        "streams.stages": "from sinks.base import Sink\nfrom etl import kafka_tools\n",
    }
    assert violations(seeded) == [
        "mappers.governance:1: mappers.governance (floor 2) imports streams (floor 4)",
        "etl.config:2: etl.config (floor 1) imports ops.cli (floor 5)",
        "sinks.duckdb:3: sinks.duckdb (floor 3) imports streams.stages (floor 4)",
    ]


def test_importing_every_module_builds_nothing_writes_nothing_reads_no_settings(
    tmp_path: Path,
) -> None:
    """No app built, no file written, no ETL_/vendor variable read at import time."""
    modules = sorted(m for m in project_modules() if not m.endswith("__main__"))
    script = textwrap.dedent(
        f"""
        import importlib, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        read = []

        class Watched(dict):
            def _note(self, key):
                if str(key).upper().startswith(
                    ("ETL_", "POSTHOG_", "RUDDERSTACK_", "SNOWFLAKE_", "BIGQUERY_")
                ):
                    read.append(key)
            def __getitem__(self, key):
                self._note(key)
                return super().__getitem__(key)
            def get(self, key, default=None):
                self._note(key)
                return super().get(key, default)
            def __contains__(self, key):
                self._note(key)
                return super().__contains__(key)

        os.environ = Watched(os.environ)
        import faust
        built = []
        original = faust.App.__init__
        def spy(self, *args, **kwargs):
            built.append(args[:1])
            original(self, *args, **kwargs)
        faust.App.__init__ = spy
        for name in {modules!r}:
            importlib.import_module(name)
        print(len(built), sorted(set(read)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "ETL_SINKS": "duckdb", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[-2] == "0 []", proc.stdout
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert written == []
