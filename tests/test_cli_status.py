"""``--json`` is only JSON on stdout, and ``etl status`` finds the local workers by itself.

Real worker processes on the bundled broker; the ``--watch`` screen is
rendered headless from the same data the JSON carries.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from ops.status import NO_EVENT, watch
from streams import runfiles


def keys(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [*map(str, doc), *(k for v in doc.values() for k in keys(v))]
    if isinstance(doc, list):
        return [k for v in doc for k in keys(v)]
    return []


def whole_json(proc: Any) -> Any:
    """stdout parsed whole: nothing but one JSON document."""
    code = proc.returncode if hasattr(proc, "returncode") else proc.code
    assert code == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def test_status_finds_local_workers_json_is_clean_and_watch_renders(make_pipeline) -> None:
    p = make_pipeline(partitions=2)
    good = [
        orjson.dumps(
            {
                "event": "tool_used",
                "distinct_id": f"u{i % 3}",
                "uuid": str(uuid.uuid4()),
                "properties": {"tool_id": "t", "tool_type": "search", "status": "ok"},
            }
        )
        for i in range(200)
    ]
    p.produce([*good, b"not json"])
    normalize, sink = p.start()
    p.wait_drained(120)

    data_dir = Path(p.env["ETL_DATA_DIR"])
    found = runfiles.discover(data_dir)
    assert sorted(d["role"] for d in found) == ["normalize", "sink:duckdb"]
    assert sorted(d["port"] for d in found) == sorted([normalize.web_port, sink.web_port])

    # No --metrics: the run files name the workers.
    doc = whole_json(p.cli("status", "--json", "--interval", "1"))
    assert doc["total_lag"] == 0
    assert sorted(doc["metrics_urls"]) == sorted([normalize.metrics_url, sink.metrics_url])
    assert doc["metrics"]["unreachable"] == []
    assert doc["metrics"]["dlq_by_reason_since_start"] == {"invalid_json": 1}
    assert doc["dlq"]["by_event"] == {NO_EVENT: 1}
    assert "None" not in keys(doc)

    # Every other command's --json: stdout is one JSON document, tables go to stderr.
    offsets = whole_json(p.cli("offsets", "show", "--sink", "duckdb", "--json"))
    assert offsets["lag"] == 0
    dlq = whole_json(p.cli("dlq", "list", "--json"))
    assert dlq["total"] == 1 and dlq["by_reason"] == {"invalid_json": 1}
    assert dlq["by_event"] == {NO_EVENT: 1}
    replay = whole_json(p.cli("replay", "--from", "-1h", "--dry-run", "--json"))
    assert replay["dry_run"] is True and replay["records"] == 201
    flags = whole_json(p.cli("flags", "list", "--json"))
    assert isinstance(flags, (list, dict))

    # The live screen, one headless frame after another.
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False, color_system=None)
    settings = p.settings.model_copy(update={"data_dir": data_dir})
    watch(settings, interval=0.5, frames=2, console=console)
    frame = out.getvalue()
    assert "etl status --watch" in frame and "total lag 0" in frame
    rows = {ln.split("│")[1].strip(): ln for ln in frame.splitlines() if ln.count("│") > 5}
    assert {"normalize", "sink:duckdb"} <= set(rows)
    assert " ok " in rows["sink:duckdb"] and " ok " in rows["normalize"]
    normalize_cells = [c.strip() for c in rows["normalize"].split("│")]
    assert normalize_cells[6] == "1"  # its one dead letter
    assert "workers scraped: 2" in frame

    # A stopped worker's run file goes with it.
    p.stop()
    assert runfiles.discover(data_dir) == []


def test_demo_json_stdout_is_one_document(tmp_path: Path) -> None:
    from tests.cli_run import etl

    warehouse = tmp_path / "wh.duckdb"
    run = etl(
        "demo",
        "--events",
        "300",
        "--warehouse",
        str(warehouse),
        "--json",
        cwd=tmp_path,
        timeout=400,
    )
    doc = whole_json(run)  # the summary tables and progress went to stderr
    assert doc["reconciled"] is True and doc["produced"] == 300
    assert "events" in run.stderr or "produced" in run.stderr


def test_worker_keeps_stdout_free_of_faust_banner(make_pipeline, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from ops.harness.broker import free_port

    p = make_pipeline(partitions=1)
    port = free_port()
    env = {**p.env, "ETL_ROLE": "normalize", "ETL_WEB_PORT": str(port), "ETL_LOG_FORMAT": "text"}
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as o, err.open("w") as e:
        worker = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "worker"], env=env, stdout=o, stderr=e, cwd=tmp_path
        )
        try:
            deadline = time.monotonic() + 90
            while not runfiles.discover(Path(p.env["ETL_DATA_DIR"])):
                assert worker.poll() is None, err.read_text()[-2000:]
                assert time.monotonic() < deadline
                time.sleep(0.5)
            time.sleep(3)  # Faust prints its banner once the worker starts
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    assert out.read_text() == ""
    assert err.read_text().strip()  # the banner and logs are there instead
