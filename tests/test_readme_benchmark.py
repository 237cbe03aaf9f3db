"""The README's benchmark headline is the committed result, not an older run.

``make bench`` rewrites ``bench/results/latest.json`` and its chart; the
README's "Latest run" tables are written by hand from it.  This fails when one
changes without the other.
"""

from __future__ import annotations

from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def _count(value: float) -> str:
    return f"{value:,.0f}"


def test_the_latest_run_in_the_readme_is_the_committed_result() -> None:
    doc = orjson.loads((ROOT / "bench" / "results" / "latest.json").read_bytes())
    readme = (ROOT / "README.md").read_text()
    date = doc["machine"]["date"].replace("T", " ").removesuffix("Z")
    assert f"**Latest run: {date} UTC**" in readme
    latest = readme[readme.index("**Latest run:") : readme.index("**Reproduce.**")]
    stages = doc["stages"]
    rows = {
        "| **ours**: etl workers, end to end |": f"**{_count(doc['ours_eps'])}**",
        "| ceiling: aiokafka + orjson, no output |": _count(doc["ceiling_eps"]),
        "| full job: aiokafka + msgspec + Arrow → DuckDB |": _count(doc["fulljob_eps"]),
        f"| peer {doc['peer_layout']}: Quix, our stages,": _count(doc["peer_eps"]),
        "| `ratio_peer` (ours /": str(doc["ratio_peer"]),
        "| `ratio_ceiling` |": str(doc["ratio_ceiling"]),
        "| `ratio_fulljob` |": str(doc["ratio_fulljob"]),
        "| `normalize_alone_eps` |": _count(doc["normalize_alone_eps"]),
        "| p99 produce → warehouse at half load": f"{_count(doc['p99_ms'])} ms",
        "| the same at quarter load": f"{_count(stages['latency_quarter']['p99_ms'])} ms",
    }
    for start, value in rows.items():
        line = next((ln for ln in latest.splitlines() if ln.startswith(start)), None)
        assert line is not None, f"no row {start!r} under Latest run"
        assert f"| {value} " in line, (line, value)
