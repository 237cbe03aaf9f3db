"""The ``etl`` console script, on Faust's CLI (``app.main()``).

``etl worker`` runs this process's role (``ETL_ROLE``); with the default role
``all`` it supervises one worker process per role instead.  Configuration is
validated before anything starts, so a bad setting fails with its name.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from etl.config import ConfigError, get_settings

    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"etl: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    from streams.logs import configure

    configure(settings.log_level, settings.log_format)
    if argv[:1] == ["worker"]:
        from etl.kafka_tools import ensure_topics

        if settings.role == "all":
            from etl.workers import supervise

            ensure_topics(settings)
            raise SystemExit(supervise(settings, argv[1:]))
        ensure_topics(settings)
        # Faust's worker reads its log level from the command line.
        if not any(a.startswith(("-l", "--loglevel")) for a in argv):
            argv += ["--loglevel", settings.log_level.lower()]

    from streams.app import app
    import streams.agents  # noqa: F401  (registers the agents of this role)
    import streams.commands  # noqa: F401  (registers etl demo/query/...)
    import streams.ops_commands  # noqa: F401  (registers etl replay/offsets/dlq/status)

    sys.argv = [os.path.basename(sys.argv[0]) or "etl", *argv]
    app.main()


if __name__ == "__main__":
    main()
