"""`etl demo` as a user runs it: one command, its own broker, real workers, a JSON summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import warehouse_rows

CORPUS = [
    b'{"event": "tool_used", "distinct_id": "u1", "uuid": "a0000000-0000-4000-8000-000000000001", '
    b'"properties": {"latency_ms": "12", "tool_type": "sql"}}',
    b'{"batch": [{"type": "track", "event": "flow_executed", "userId": "u2", "messageId": "m-2", '
    b'"properties": {"success": true}}, {"type": "track", "userId": "u2", "messageId": "m-3"}], '
    b'"sentAt": "2026-11-19T10:00:00Z"}',
    b"",
    b"{not json",
    b'{"event": "prompt_blocked", "distinct_id": "u3", "properties": {"match_score": 7}}',
    b'{"event": "$ai_generation", "distinct_id": "u4", "properties": {"$ai_model": "m", '
    b'"$ai_total_cost_usd": 0.01}}',
    b"\xff\xfe not utf-8",
]


def test_demo_runs_an_input_file_to_a_json_summary(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"\n".join(CORPUS) + b"\n")
    warehouse = tmp_path / "wh.duckdb"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "demo",
            "--input",
            str(corpus),
            "--warehouse",
            str(warehouse),
            "--json",
            "--partitions",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["messages"] == 7
    assert summary["produced"] == 8  # the batch holds two events
    assert summary["normalized"] == 3 and summary["rejected"] == 5
    assert summary["reconciled"] is True
    assert summary["rejected_by_reason"] == {
        "empty_message": 1,
        "invalid_json": 2,
        "missing_event_name": 1,
        "out_of_range": 1,
    }
    assert summary["by_event"] == {"$ai_generation": 1, "flow_executed": 1, "tool_used": 1}
    assert summary["warehouse"]["events"] == 3 and summary["warehouse"]["rejected_events"] == 5
    # The analysts' tables; the sink's own bookkeeping (_etl_*) is not part of the summary.
    tables = summary["warehouse"]["tables"]
    assert tables["events"] == 3 and tables["tool_used"] == 1
    assert not [t for t in tables if t.startswith("_etl_")], tables
    assert summary["events_per_second"] > 0
    assert warehouse_rows(warehouse, "SELECT latency_ms, tool_type FROM tool_used") == [
        (12.0, "sql")
    ]

    # `etl query` reads the same warehouse, read-only, as JSON lines.
    query = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "query",
            "--warehouse",
            str(warehouse),
            "--format",
            "json",
            "SELECT event, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert query.returncode == 0, query.stderr[-2000:]
    rows = [
        orjson.loads(line) for line in query.stdout.strip().splitlines() if line.startswith("{")
    ]
    assert rows == [
        {"event": "$ai_generation", "n": 1},
        {"event": "flow_executed", "n": 1},
        {"event": "tool_used", "n": 1},
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "ops.cli", "query", "--warehouse", str(warehouse), "SELEC nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert bad.returncode != 0 and "syntax error" in (bad.stdout + bad.stderr).lower()
