"""Build hook: the hot path's modules (``etl/compiled.py``) compiled with mypyc.

Pure Python when ``ANALYTICS_ETL_COMPILE=0``, when mypyc is not importable (an isolated
build: ``make install`` builds without isolation, beside the pinned mypy), or
when the tree lacks those sources (the container build's dependency layer).
Everything else is in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
#: Commands that build the package; the metadata steps (egg_info, dist_info) skip mypyc's minute.
BUILDING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}


def compiled_extensions() -> list:
    if os.environ.get("ANALYTICS_ETL_COMPILE", "1") == "0" or BUILDING.isdisjoint(sys.argv[1:]):
        return []
    listing = ROOT / "etl" / "compiled.py"
    if not listing.exists():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("mypyc is not installed: building pure Python", file=sys.stderr)
        return []
    sources = [s for s in runpy.run_path(str(listing))["SOURCES"] if (ROOT / s).exists()]
    # One shared library, kept inside a package: the editable install maps packages only.
    return mypycify(sources, opt_level="3", group_name="etl.hotpath") if sources else []


setup(ext_modules=compiled_extensions())
