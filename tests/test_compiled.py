"""The compiled hot path (etl/compiled.py) is the source, only faster.

``make`` builds the listed modules with mypyc; everything else imports them
compiled.  The source stays the reference: the same corpus normalized by the
compiled modules here and by a pure-Python copy of the tree in a subprocess
must give the same bytes, keys and dead letters.  (mypyc enforces the
annotations at run time and compiles arithmetic by the declared types, so a
difference is a real bug in one of the two, as an int bound once compared as
a float was.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mappers.normalize
from etl.compiled import ROOT, SOURCES, compiled_modules, stale_modules

#: Normalizes the corpus (the seeded mix, with hostile and batched messages) and prints
#: what the stage made of it, as JSON; run here and in the pure-Python copy.
SCRIPT = """
import json, sys
import mappers.normalize
from etl.config import CoreSettings
from ops.harness.synthetic import Generator
from ops.inprocess import Record
from streams.stages import NormalizeStage

values = [
    m.value
    for seed, malformed, batches in ((7, 0.02, 0.0), (3, 0.3, 0.3), (11, 0.6, 0.5))
    for m in Generator(seed=seed, malformed_rate=malformed, batch_rate=batches).messages(3000)
]
records = [Record("raw", i % 3, i, 1_795_000_000_000 + i, v) for i, v in enumerate(values)]
stage = NormalizeStage(CoreSettings())
out = {"module": mappers.normalize.__file__, "batches": []}
for start in range(0, len(records), 500):
    batch = stage.process(records[start : start + 500])
    out["batches"].append({
        "encoded": [raw.decode() for raw in batch.encoded],
        "keys": batch.keys,
        "dead": [[r.reason, r.error, r.field, r.raw.hex(), r.batch_index, r.message_id]
                 for r, *_ in batch.dead],
        "by_event": dict(batch.by_event),
    })
json.dump(out, sys.stdout)
"""

BUILT_PURE = os.environ.get("ANALYTICS_ETL_COMPILE") == "0"


def _normalize_corpus(cwd: Path, pythonpath: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


@pytest.mark.skipif(BUILT_PURE, reason="installed with ANALYTICS_ETL_COMPILE=0")
def test_every_listed_module_is_compiled_and_current() -> None:
    assert compiled_modules() == list(SOURCES)
    assert stale_modules() == []
    assert mappers.normalize.__file__.endswith(".so")


@pytest.mark.skipif(BUILT_PURE, reason="installed with ANALYTICS_ETL_COMPILE=0")
def test_the_compiled_stage_gives_exactly_what_the_source_gives(tmp_path: Path) -> None:
    pure = tmp_path / "pure"
    for package in ("etl", "mappers", "sinks", "streams", "ops"):
        shutil.copytree(
            ROOT / package, pure / package, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
    source = _normalize_corpus(tmp_path, pure)
    compiled = _normalize_corpus(tmp_path, ROOT)
    assert source["module"].endswith("normalize.py")
    assert compiled["module"].endswith(".so")
    assert len(source["batches"]) == len(compiled["batches"]) == 9
    dead = sum(len(b["dead"]) for b in source["batches"])
    assert dead > 600  # the hostile share reached the rejection paths
    for ours, reference in zip(compiled["batches"], source["batches"], strict=True):
        assert ours == reference
