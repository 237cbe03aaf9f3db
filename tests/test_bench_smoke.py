"""Smoke test of the benchmark harness: every phase on ~2,000 events, the JSON it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = (
    "ours_eps",
    "peer_eps",
    "ceiling_eps",
    "fulljob_eps",
    "ratio_peer",
    "ratio_ceiling",
    "ratio_fulljob",
    "normalize_alone_eps",
    "peer_layout",
    "p99_ms",
    "p50_ms",
    "rss_mb",
)


def _bench(broker: Any, out: Path, *extra: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m bench`` on ~2,000 events against the test broker, writing to ``out``."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *extra, "--events", "2000", "--latency-seconds", "1"]
        + ["--bootstrap", broker.bootstrap, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_runs_every_phase_and_prints_the_json(broker, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = _bench(broker, out, timeout=230)
    last = proc.stdout.decode().strip().splitlines()[-1]
    doc = orjson.loads(last)

    assert set(list(doc)[: len(HEADLINE)]) == set(HEADLINE)  # headline keys first
    for key in ("ours_eps", "peer_eps", "ceiling_eps", "fulljob_eps", "p50_ms", "p99_ms", "rss_mb"):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    stages = doc["stages"]
    # The peer is the faster of its two layouts, and the ratio is against that one.
    layouts = {"single": stages["peer_single"], "split": stages["peer_split"]}
    assert doc["peer_layout"] == max(layouts, key=lambda k: layouts[k]["eps"])
    assert doc["peer_eps"] == max(p["eps"] for p in layouts.values())
    assert layouts["single"]["processes"] == 1 and layouts["split"]["processes"] == 2
    assert set(layouts["split"]["rss_mb"]) == {"quix-normalize", "quix-sink"}
    assert set(layouts["split"]["cpu_seconds"]) == {"quix-normalize", "quix-sink"}
    assert all(v > 0 for p in layouts.values() for v in p["cpu_seconds"].values())
    assert doc["ratio_peer"] == round(doc["ours_eps"] / doc["peer_eps"], 3)
    assert doc["ratio_ceiling"] == round(doc["ours_eps"] / doc["ceiling_eps"], 4)
    assert doc["fulljob_eps"] == stages["fulljob"]["eps"]
    assert doc["ratio_fulljob"] == round(doc["ours_eps"] / doc["fulljob_eps"], 4)
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
    assert doc["machine"]["reference_us_start"] > 0 and doc["machine"]["reference_us_end"] > 0

    workload = doc["workload"]
    assert workload["events"] == workload["valid"] + workload["rejected"] >= 2000
    assert workload["messages"] == workload["events"]  # headline mix: single-event messages
    # Every contender accounts for every event (landed or rejected); ours and the
    # peer run the same stages, so they land the same; the full job validates less.
    landed = {
        name: (stages[name]["warehouse_events"], stages[name]["warehouse_rejected"])
        for name in ("peer_single", "peer_split", "ours", "fulljob")
    }
    assert landed["ours"] == landed["peer_single"] == landed["peer_split"]
    assert sum(landed["ours"]) == sum(landed["fulljob"]) == workload["events"]
    assert landed["ours"][1] >= 1  # the ~2% malformed share reached rejected_events
    assert stages["ceiling"]["messages"] == workload["messages"]
    assert set(stages["ours"]["rss_mb"]) == {"normalize-0", "sink-duckdb"}
    cpu = stages["ours"]["cpu_seconds"]
    assert set(cpu) == {"normalize-0", "sink-duckdb", "other"}
    # Both workers worked, and no worker used more CPU than the machine was busy for.
    assert cpu["normalize-0"] > 0 and cpu["sink-duckdb"] > 0 and cpu["other"] > -1.0
    assert all(v > 0 for p in layouts.values() for v in p["rss_mb"].values())
    assert set(stages["sink_alone"]) == {
        "500",
        "2000",
        "5000",
        "10000",
        "500 held",
        "2000 held",
        "5000 held",
        "10000 held",
        "10000 held, 16 MB checkpoints",
        "10000 held, merges always",
    }
    assert all(r["max_ms_per_batch"] > 0 for r in stages["sink_alone"].values())
    assert all(
        r["rows"] == min(workload["valid"], landed["ours"][0])
        for r in stages["sink_alone"].values()
    )
    for phase in ("latency", "latency_quarter"):
        latency = stages[phase]
        assert latency["events"] >= 1
        # Every probe is found on the normalized topic, and each half is in time order.
        split = latency["split_ms"]
        assert split["events"] == latency["events"]
        for half in ("to_normalized", "normalized_to_loaded"):
            assert 0 <= split[half]["p50"] <= split[half]["p99"] <= latency["max_ms"]
    # The stage alone sees the same workload: every message is normalized or dead-lettered.
    alone = stages["normalize_alone"]
    assert alone["normalized"] + alone["rejected"] == alone["messages"] == workload["messages"]
    assert alone["rejected"] == landed["ours"][1]
    assert doc["normalize_alone_eps"] == alone["eps"] > 0

    assert orjson.loads((out / "latest.json").read_bytes())["ours_eps"] == doc["ours_eps"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["machine"]["date"].startswith("20")  # the chart's title carries it


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_profiled_run_writes_its_own_result_and_leaves_the_latest_alone(
    broker, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "latest.json").write_bytes(b'{"ours_eps": 1.0}\n')
    _bench(broker, out, "--profile", timeout=290)
    assert orjson.loads((out / "latest.json").read_bytes()) == {"ours_eps": 1.0}
    doc = orjson.loads((out / "profile-run.json").read_bytes())
    assert doc["profiled"] is True
    assert set(doc["profiles"]) == {"normalize", "sink-duckdb"}
    for profile in doc["profiles"].values():
        assert profile["samples"] > 0
        assert Path(profile["flamegraph"]).read_bytes().lstrip().startswith(b"<?xml")
    assert (out / "profile-run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
