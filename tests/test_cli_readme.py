"""The README's marked command blocks, run against ``etl dev``, so they cannot rot.

A block counts when the line before its opening fence starts with
``<!-- readme-test``.  Each line is one command, run by bash with the
environment ``etl dev`` writes to ``env.sh``; ``(exit N)`` in its comment
names an expected exit code other than 0.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams import runfiles
from tests.cli_run import ROOT, clean_env

MARK = "<!-- readme-test"


def readme_commands(text: str) -> list[tuple[str, int]]:
    """(command, expected exit code) for every line of every marked block."""
    commands = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("```") or i == 0 or not lines[i - 1].startswith(MARK):
            continue
        for body in lines[i + 1 :]:
            if body.startswith("```"):
                break
            command, _, comment = body.partition("  #")
            if not command.strip():
                continue
            expected = re.search(r"\(exit (\d+)\)", comment)
            commands.append((command.strip(), int(expected.group(1)) if expected else 0))
    return commands


def env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def test_the_marker_finds_the_quick_start_and_operations_blocks() -> None:
    commands = [c for c, _ in readme_commands((ROOT / "README.md").read_text())]
    for wanted in ("etl query", "etl replay", "etl offsets", "etl dlq", "etl status"):
        assert any(wanted in c for c in commands), wanted
    assert not any("--watch" in c for c in commands)  # a screen never ends on its own


def test_readme_commands_run_against_etl_dev(tmp_path: Path) -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    work = tmp_path / "dev"
    venv_bin = str(Path(sys.executable).parent)
    env = clean_env(PATH=f"{venv_bin}:{clean_env().get('PATH', '')}")
    dev_log = (tmp_path / "dev.out").open("w"), (tmp_path / "dev.err").open("w")
    dev = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "dev", "--dir", str(work), "--events", "500"],
        env=env,
        cwd=tmp_path,
        stdout=dev_log[0],
        stderr=dev_log[1],
    )
    try:
        deadline = time.monotonic() + 240
        while not (work / "env.sh").exists():
            assert dev.poll() is None, (tmp_path / "dev.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "etl dev did not come up"
            time.sleep(0.5)
        exported = env_file(work / "env.sh")
        assert (tmp_path / "dev.out").read_text().startswith("export ETL_KAFKA__BOOTSTRAP_SERVERS=")
        assert exported["ETL_DUCKDB__PATH"] == str((work / "warehouse.duckdb").resolve())
        # Quick start's .venv/bin/etl is this interpreter's etl.
        (tmp_path / ".venv").symlink_to(Path(venv_bin).parent)
        failures = []
        for command, expected in commands:
            run = subprocess.run(
                ["bash", "-c", command],
                env={**env, **exported},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=180,
            )
            if run.returncode != expected or "Traceback" in run.stderr:
                failures.append(f"{command}: exit {run.returncode}\n{run.stderr[-1500:]}")
        assert not failures, "\n\n".join(failures)
        assert dev.poll() is None, "etl dev stopped while the commands ran"
    finally:
        dev.send_signal(signal.SIGTERM)
        code = dev.wait(timeout=60)
        for f in dev_log:
            f.close()
    assert code == 0, (tmp_path / "dev.err").read_text()[-3000:]
    assert runfiles.discover(work / "state") == []  # the workers went with it
