"""A worker process: one role, handed to Faust's worker (``python -m streams.worker``).

``etl worker`` ends here, and so does every process the supervisor starts.
With role ``all`` it supervises one process per role instead.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, NoReturn

from etl import kafka_tools
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
    kafka_tools.ensure_topics(settings)
    if settings.role.kind == "all":
        raise SystemExit(supervise(settings, args))
    app = build_worker(settings, settings.role)
    # Faust's worker reads its log level from its own command line.
    if not any(a.startswith(("-l", "--loglevel")) for a in args):
        args += ["--loglevel", settings.log_level.lower()]
    sys.argv = ["etl", "worker", *args]
    app.main()
    raise SystemExit(0)  # pragma: no cover - app.main() exits itself


def main() -> NoReturn:
    from etl.config import ConfigError
    from sinks.settings import load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"etl: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run(settings, sys.argv[1:])


if __name__ == "__main__":
    main()
