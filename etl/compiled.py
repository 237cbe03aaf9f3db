"""The modules the build compiles with mypyc, and whether the compiled ones are current.

The normalize and sink stages spend most of their time in the interpreter's
own overhead (calls, attribute and dict access); compiled, the same source
runs with a fraction of it.  The source stays the reference: a build without
a compiler (``ANALYTICS_ETL_COMPILE=0``) runs it unchanged, and a test holds the two
to the same output.

An editable checkout keeps each compiled module (``.so``) next to its
source, and Python imports the compiled one first.  :func:`stale_modules`
says when a source changed after its build, so an edit is never silently
ignored (``make compile`` rebuilds).
"""

from __future__ import annotations

from pathlib import Path

#: Source files (relative to the project root) compiled into one extension.
SOURCES: tuple[str, ...] = (
    "mappers/dialects/posthog.py",
    "mappers/dialects/reading.py",
    "mappers/dialects/segment.py",
    "mappers/envelope.py",
    "mappers/identifiers.py",
    "mappers/jsontypes.py",
    "mappers/normalize.py",
    "mappers/redact.py",
    "mappers/suppression.py",
    "mappers/timestamps.py",
    "mappers/typed.py",
    "sinks/identity.py",
    "sinks/schema.py",
    "streams/stages.py",
)


#: The project root as installed: the folder holding the ``etl`` package.
ROOT = Path(__file__).resolve().parent.parent


def compiled_file(source: str) -> Path | None:
    """The extension built from ``source``, next to it (which the import system prefers)."""
    path = ROOT / source
    return next(iter(sorted(path.parent.glob(f"{path.stem}.*.so"))), None)


def compiled_modules() -> list[str]:
    """The listed sources that have a compiled extension beside them."""
    return [source for source in SOURCES if compiled_file(source) is not None]


def stale_modules() -> list[str]:
    """Listed sources changed after their compiled extension was built."""
    stale = []
    for source in SOURCES:
        compiled = compiled_file(source)
        if compiled is not None and (ROOT / source).stat().st_mtime > compiled.stat().st_mtime:
            stale.append(source)
    return stale
