"""Run the real ``etl`` command in a subprocess, as a user would, and time it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def one_line_error(self) -> str:
        """The single stderr line of a user error (warnings excluded); fails on a traceback."""
        assert "Traceback" not in self.stderr, self.stderr
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if not ln.startswith("etl: warning:")]
        assert len(errors) == 1, self.stderr
        return errors[0]


def clean_env(**env: str) -> dict[str, str]:
    """The environment without a developer's ETL_* settings, plus ``env``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ETL_", "POSTHOG_", "RUDDERSTACK_", "SNOWFLAKE_", "KAFKA_"))
    }
    return {**base, **env}


def etl(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> Run:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env=env if env is not None else clean_env(),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
