"""Smoke test of the benchmark harness: every phase on ~2,000 events, the JSON it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = (
    "ours_eps",
    "peer_eps",
    "ceiling_eps",
    "ratio_peer",
    "ratio_ceiling",
    "p99_ms",
    "p50_ms",
    "rss_mb",
)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_runs_every_phase_and_prints_the_json(broker, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--events",
            "2000",
            "--latency-seconds",
            "1",
            "--bootstrap",
            broker.bootstrap,
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    last = proc.stdout.decode().strip().splitlines()[-1]
    doc = orjson.loads(last)

    assert set(list(doc)[: len(HEADLINE)]) == set(HEADLINE)  # headline keys first
    for key in ("ours_eps", "peer_eps", "ceiling_eps", "p50_ms", "p99_ms", "rss_mb"):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    assert doc["ratio_peer"] == round(doc["ours_eps"] / doc["peer_eps"], 3)
    assert doc["ratio_ceiling"] == round(doc["ours_eps"] / doc["ceiling_eps"], 4)
    assert doc["p50_ms"] <= doc["p99_ms"]
    assert set(doc["machine"]) >= {
        "python",
        "faust",
        "aiokafka",
        "duckdb",
        "quixstreams",
        "cpu",
        "nproc",
        "date",
    }
    assert doc["machine"]["quixstreams"] == "3.28.1"

    workload = doc["workload"]
    assert workload["events"] == workload["valid"] + workload["rejected"] >= 2000
    assert workload["messages"] == workload["events"]  # headline mix: single-event messages
    stages = doc["stages"]
    # Both contenders account for every event (landed or rejected), and land the same.
    landed = {
        name: (stages[name]["warehouse_events"], stages[name]["warehouse_rejected"])
        for name in ("peer", "ours")
    }
    assert landed["ours"] == landed["peer"]
    assert sum(landed["ours"]) == workload["events"]
    assert landed["ours"][1] >= 1  # the ~2% malformed share reached rejected_events
    assert stages["ceiling"]["messages"] == workload["messages"]
    assert set(stages["ours"]["rss_mb"]) == {"normalize-0", "sink-duckdb"}
    assert stages["peer"]["rss_mb"] > 0
    assert set(stages["sink_alone"]) == {
        "500",
        "2000",
        "5000",
        "10000",
        "500 held",
        "2000 held",
        "5000 held",
        "10000 held",
    }
    assert all(
        r["rows"] == min(workload["valid"], landed["ours"][0])
        for r in stages["sink_alone"].values()
    )
    assert stages["latency"]["events"] >= 1

    assert orjson.loads((out / "latest.json").read_bytes())["ours_eps"] == doc["ours_eps"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
