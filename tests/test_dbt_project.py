"""The shipped dbt project (dbt/) builds on a warehouse made by the real pipeline stages:
sources with freshness, the views as models, and the tests (unique/not-null message_id,
accepted values, relationships to users) all pass under ``dbt build`` with dbt-duckdb."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ops.inprocess import Record
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.settings import Settings
from streams.outputs import DeadLetters, MemoryOutput
from streams.stages import NormalizeStage, SinkStage
from tests.test_warehouse_parity import IDENTITY_RAW, KNOWN_RAW

DBT_DIR = Path(__file__).resolve().parent.parent / "dbt"


def build_warehouse(path: Path) -> None:
    settings = Settings(sinks=["duckdb"], duckdb=DuckDBSettings(path=path))
    records = [Record("raw", 0, i, None, v) for i, v in enumerate(KNOWN_RAW + IDENTITY_RAW)]
    stage = NormalizeStage(settings).start()
    try:
        batch = stage.process(records)
    finally:
        stage.close()
    assert not batch.dead

    async def deliver() -> None:
        sink = SinkStage(settings, DuckDBSink(settings), DeadLetters(MemoryOutput(), settings))
        await sink.open()
        await sink.deliver(batch.events())
        await sink.close()

    asyncio.run(deliver())


def dbt_executable() -> Path | None:
    """``make install`` puts dbt-duckdb in its own venv (its pins clash with the linters')."""
    for exe in (
        DBT_DIR.parent / ".venv-dbt" / "bin" / "dbt",
        Path(sys.executable).with_name("dbt"),
    ):
        if exe.exists():
            return exe
    found = shutil.which("dbt")
    return Path(found) if found else None


def dbt(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = dbt_executable()
    assert exe is not None
    return subprocess.run(
        [str(exe), *args, "--profiles-dir", str(cwd), "--project-dir", str(cwd)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_dbt_build_passes_on_a_pipeline_made_warehouse(tmp_path) -> None:
    if dbt_executable() is None:  # a missing tool fails the suite with the reason, never skips
        pytest.fail("dbt is missing: `make install` builds it in .venv-dbt")
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(warehouse)
    project = tmp_path / "dbt"
    shutil.copytree(DBT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    env = {**os.environ, "ETL_DUCKDB__PATH": str(warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "0"}
    built = dbt("build", cwd=project, env=env)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-2000:]
    assert "ERROR=0" in built.stdout.replace(" ", "")
    fresh = dbt("source", "freshness", cwd=project, env=env)
    assert fresh.returncode == 0, fresh.stdout[-3000:]
    docs = dbt("docs", "generate", cwd=project, env=env)
    assert docs.returncode == 0 and (project / "target" / "catalog.json").exists()
