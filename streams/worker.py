"""A worker process: one role, handed to Faust's worker (``python -m streams.worker``).

``etl worker`` ends here, and so does every process the supervisor starts.
With role ``all`` it supervises one process per role instead.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, NoReturn

from etl import kafka_tools
from etl.collector import tune_for_batches
from etl.compiled import stale_modules
from etl.config import duckdb_file_problem
from streams import runfiles
from streams.logs import configure
from streams.roles import build_worker
from streams.supervisor import supervise

if TYPE_CHECKING:
    from sinks.settings import Settings

log = logging.getLogger("etl.worker")


def run(settings: Settings, extra_args: list[str] | None = None) -> NoReturn:
    """Run this process's role until it is stopped (never returns)."""
    args = list(extra_args or [])
    configure(settings.log_level, settings.log_format)
    stale = stale_modules()
    if stale:
        # The compiled module is what runs: an edit since the build would be silently ignored.
        log.warning(
            "source changed after its compiled build, which is what runs: %s; "
            "`make compile` rebuilds",
            ", ".join(stale),
        )
    if "duckdb" in settings.checked_sinks():
        problem = duckdb_file_problem(settings.duckdb.path)
        if problem:
            log.error("invalid configuration: %s", problem)
            raise SystemExit(2)
    try:
        # Bounded, and saying what it waits for: an orchestrator restarts a worker that exits.
        kafka_tools.wait_for_broker(settings, settings.kafka.connect_timeout, announce=5.0)
    except kafka_tools.BrokerUnreachable as exc:
        log.error("%s; ETL_KAFKA__CONNECT_TIMEOUT sets how long to wait", exc.args[0])
        raise SystemExit(2) from None
    kafka_tools.ensure_topics(settings)
    if settings.role.kind == "all":
        raise SystemExit(supervise(settings, args))
    app = build_worker(settings, settings.role)
    if settings.web_enabled and settings.web_port:
        runfiles.record(settings.data_dir, settings.role, settings.web_port)
    # Faust's worker reads its log level from its own command line.
    if not any(a.startswith(("-l", "--loglevel")) for a in args):
        args += ["--loglevel", settings.log_level.lower()]
    sys.argv = ["etl", "worker", *args]
    # Faust prints its banner to stdout; stdout stays free for machine-readable output.
    sys.stdout = sys.stderr
    tune_for_batches()
    app.main()
    raise SystemExit(0)  # pragma: no cover - app.main() exits itself


def main() -> NoReturn:
    from etl.config import ConfigError, unknown_env_warnings
    from sinks.settings import Settings, load_settings

    for line in unknown_env_warnings(Settings):
        print(f"etl: {line}", file=sys.stderr)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"etl: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    run(settings, sys.argv[1:])


if __name__ == "__main__":
    main()
