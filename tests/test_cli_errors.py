"""The ``etl`` command with wrong settings and no broker, as a new user meets it.

Each case checks the message (it names the variable to change), the exit
code (2: usage or configuration), a time bound and that no traceback shows.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.cli_run import clean_env, etl


def startup_seconds(tmp_path: Path) -> float:
    """Wall time of a command that loads the same settings and touches no network.

    The machine is shared: under load, interpreter start-up alone can take many
    seconds.  Bounds are "this much beyond start-up", and the plain bound holds
    whenever start-up is quick.
    """
    return etl("flags", "list", "--json", cwd=tmp_path).seconds


def assert_bounded(seconds: float, budget: float, startup: float) -> None:
    """Within ``budget`` beyond start-up, and within 10 s whenever start-up is quick.

    Start-up is allowed twice over: on a loaded machine two runs of the same
    imports differ by seconds.
    """
    assert seconds < 2 * startup + budget, (seconds, startup)
    if startup < 3:
        assert seconds < 10, (seconds, startup)


def dead_address() -> str:
    """A local port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["replay", "--from", "-2h", "--dry-run"],
        ["offsets", "show", "--sink", "duckdb"],
        ["dlq", "list"],
        ["dlq", "show"],
    ],
    ids=lambda a: " ".join(a),
)
def test_unreachable_broker_fails_fast_naming_the_setting(args: list[str], tmp_path: Path) -> None:
    address = dead_address()
    startup = startup_seconds(tmp_path)
    run = etl(*args, env=clean_env(ETL_KAFKA__BOOTSTRAP_SERVERS=address), cwd=tmp_path)
    line = run.one_line_error()
    assert run.code == 2
    assert "ETL_KAFKA__BOOTSTRAP_SERVERS" in line and address in line
    # 3 s of connection attempts beyond start-up (was 32-63 s of client retries).
    assert "after 3 s" in line
    assert_bounded(run.seconds, 6, startup)
    assert run.stdout == ""


def test_worker_says_what_it_waits_for_and_exits_after_the_bound(tmp_path: Path) -> None:
    address = dead_address()
    env = clean_env(
        ETL_KAFKA__BOOTSTRAP_SERVERS=address,
        ETL_KAFKA__CONNECT_TIMEOUT="4",
        ETL_ROLE="normalize",
        ETL_WEB_ENABLED="false",
    )
    startup = startup_seconds(tmp_path)
    run = etl("worker", env=env, cwd=tmp_path)
    assert "Traceback" not in run.stderr
    assert run.code != 0
    waiting = [ln for ln in run.stderr.splitlines() if "waiting for a Kafka broker" in ln]
    assert waiting and address in waiting[0] and "ETL_KAFKA__BOOTSTRAP_SERVERS" in waiting[0]
    final = run.stderr.strip().splitlines()[-1]
    assert "ETL_KAFKA__CONNECT_TIMEOUT" in final and address in final
    # The bound plus start-up; never Faust's 60 s of retries.
    assert run.seconds >= 4
    assert run.seconds < startup + 4 + 8, (run.seconds, startup)
    assert run.stdout == ""


def test_help_needs_no_broker_nor_settings(tmp_path: Path) -> None:
    # Settings that would fail to load, and nothing listening: help still answers at once.
    env = clean_env(ETL_KAFKA__BOOTSTRAP_SERVERS=dead_address(), ETL_FLAGS__GATES="{bad")
    startup = startup_seconds(tmp_path)
    top = etl("--help", env=env, cwd=tmp_path)
    assert top.code == 0 and "Commands:" in top.stdout and "Faust" not in top.stdout
    listed = top.stdout.split("Commands:")[1].strip().splitlines()
    assert len(listed) >= 10 and not any(ln.endswith("...") for ln in listed), listed
    for command in ("worker", "demo", "query", "replay", "offsets", "dlq", "status", "validate"):
        run = etl(command, "--help", env=env, cwd=tmp_path)
        assert run.code == 0, run.stderr
        assert "Example:" in run.stdout, command
        assert_bounded(run.seconds, 2, startup)  # help loads no settings: never slower
    worker = etl("worker", "--help", env=env, cwd=tmp_path).stdout
    # The docstring is dedented: every paragraph line starts at the same two-space margin.
    body = worker.split("\n\n")[1:3]
    assert all(
        ln.startswith("  ") and not ln.startswith("   ") for p in body for ln in p.splitlines()
    )
    version = etl("--version", env=env, cwd=tmp_path)
    assert version.code == 0 and version.stdout.startswith("etl (analytics-etl)")


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"ETL_FLAGS__GATES": "{bad json"}, "ETL_FLAGS__GATES", "not valid JSON"),
        ({"ETL_REDACTION__PATHS": ".,.."}, "ETL_REDACTION__PATHS", "dotted property path"),
        ({"ETL_KAFKA__BOOTSTRAP_SERVERS": " , "}, "ETL_KAFKA__BOOTSTRAP_SERVERS", "empty"),
        ({"ETL_KAFKA__BOOTSTRAP_SERVERS": "kafka"}, "ETL_KAFKA__BOOTSTRAP_SERVERS", "host:port"),
        (
            {"ETL_KAFKA__BOOTSTRAP_SERVERS": "a:9092,b:99999"},
            "ETL_KAFKA__BOOTSTRAP_SERVERS",
            "out of range",
        ),
        ({"ETL_DATA_DIR": "afile"}, "ETL_DATA_DIR", "not a directory"),
        (
            {"ETL_FLAGS__DATABASE_URL": "mysql://u:hunter2@db/flags"},
            "ETL_FLAGS__DATABASE_URL",
            "PostgreSQL",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
@pytest.mark.parametrize("command", [["status"], ["flags", "list"], ["worker"]])
def test_configuration_errors_are_one_line_exit_2(
    env: dict[str, str], variable: str, words: str, command: list[str], tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    startup = startup_seconds(tmp_path)
    run = etl(*command, env=clean_env(**env), cwd=tmp_path, timeout=60)
    line = run.one_line_error()
    assert run.code == 2, run.stderr
    assert variable in line and words in line, line
    assert "hunter2" not in run.stderr  # a URL's password is never echoed
    # No network and no retries: start-up only.
    assert_bounded(run.seconds, 4, startup)


def test_a_file_that_is_not_duckdb_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    run = etl("query", "SELECT 1", env=clean_env(ETL_DUCKDB__PATH="notes.txt"), cwd=tmp_path)
    line = run.one_line_error()
    assert run.code == 2 and "ETL_DUCKDB__PATH" in line and "not a DuckDB" in line
    run = etl("query", "--warehouse", "notes.txt", "SELECT 1", cwd=tmp_path)
    assert run.code == 2 and "--warehouse" in run.one_line_error()
    env = clean_env(
        ETL_DUCKDB__PATH="notes.txt",
        ETL_ROLE="sink:duckdb",
        ETL_KAFKA__BOOTSTRAP_SERVERS=dead_address(),
    )
    worker = etl("worker", env=env, cwd=tmp_path)
    assert worker.code == 2 and "ETL_DUCKDB__PATH" in worker.one_line_error()


def test_unknown_variable_warns_naming_the_closest_setting(tmp_path: Path) -> None:
    env = clean_env(ETL_KAFKA__BOOTSTRAP_SERVER="127.0.0.1:1", ETL_LOGLEVEL="DEBUG")
    run = etl("flags", "list", "--json", env=env, cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert (
        "etl: warning: ETL_KAFKA__BOOTSTRAP_SERVER is not a setting; "
        "did you mean ETL_KAFKA__BOOTSTRAP_SERVERS?" in run.stderr
    )
    assert "did you mean ETL_LOG_LEVEL?" in run.stderr


def test_commands_that_never_deliver_do_not_ask_for_sink_credentials(tmp_path: Path) -> None:
    env = clean_env(ETL_SINKS="posthog,snowflake")
    # A worker for those sinks names every missing variable at once.
    worker = etl("worker", env=env, cwd=tmp_path)
    line = worker.one_line_error()
    assert worker.code == 2
    assert "ETL_POSTHOG__API_KEY" in line and "ETL_SNOWFLAKE__ACCOUNT" in line
    flags = etl("flags", "list", "--json", env=env, cwd=tmp_path)
    assert flags.code == 0, flags.stderr
    query = etl("query", "SELECT 1", env=env, cwd=tmp_path)
    assert "POSTHOG" not in query.stderr and "not configured" not in query.stderr
    # A typo in ETL_SINKS stops what delivers, one line naming the variable.
    typo = clean_env(ETL_SINKS="duckdb,duckbd", ETL_KAFKA__BOOTSTRAP_SERVERS=dead_address())
    for command in (["status"], ["worker"], ["replay", "--dry-run"]):
        run = etl(*command, env=typo, cwd=tmp_path)
        line = run.one_line_error()
        assert run.code == 2 and "unknown sink 'duckbd'" in line and "ETL_SINKS" in line, line


def test_usage_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    run = etl("offsets", "explode", "--sink", "duckdb", cwd=tmp_path)
    assert run.code == 2 and "see 'etl offsets --help'" in run.one_line_error()
    run = etl("nosuch", cwd=tmp_path)
    assert run.code == 2 and run.one_line_error().startswith("etl: ")


def test_a_kafka_error_in_a_command_is_one_line_exit_1(broker, tmp_path: Path) -> None:
    # A reachable broker without this job's topics: the command fails, it is no bug.
    env = clean_env(
        ETL_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
        ETL_KAFKA__NORMALIZED_TOPIC="absent-normalized",
        ETL_KAFKA__DLQ_TOPIC="absent-dlq",
    )
    startup = startup_seconds(tmp_path)
    run = etl("offsets", "show", "--sink", "duckdb", env=env, cwd=tmp_path)
    line = run.one_line_error()
    assert run.code == 1
    assert line.startswith("etl: Kafka: ") and "'absent-normalized' not found" in line, line
    assert "ETL_KAFKA__*_TOPIC" in line
    assert run.seconds < startup + 20, (run.seconds, startup)  # 10 s waiting for the topic
