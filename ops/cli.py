"""The ``etl`` command: our own click group.

Only ``etl worker`` hands over to Faust (``streams.worker``).  Every command
is a thin front-end over the tooling modules beside this one; ``--help``
never loads settings or touches the network.

Exit codes everywhere: 0 success, 1 failure, 2 usage or configuration.
User errors are one line on stderr; tracebacks only for bugs, behind
``--debug``.  With ``--json`` stdout holds only JSON.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from sinks.settings import Settings

EXAMPLE = "\n\n\b\nExample:\n  "

F = Callable[..., Any]


def example(*lines: str) -> Callable[[F], F]:
    """Give a command's help a properly dedented docstring and an ``Example:`` block.

    Put it below ``@cli.command()`` so the docstring is set before click reads it.
    """

    def decorate(f: F) -> F:
        doc = inspect.cleandoc(f.__doc__ or "")
        f.__doc__ = doc + EXAMPLE + "\n  ".join(lines)
        return f

    return decorate


def _version() -> str:
    try:
        return metadata.version("analytics-etl")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class Interrupted(click.ClickException):
    """Stopped by SIGINT/SIGTERM: one line (where to resume), exit 130."""

    exit_code = 130

    def show(self, file: Any = None) -> None:
        click.echo(f"etl: {self.format_message()}", err=True)


class UserError(click.ClickException):
    """A problem the user can fix: one line, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"etl: {self.format_message()}", err=True)


class Failure(click.ClickException):
    """The command ran and failed (exit 1)."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"etl: {self.format_message()}", err=True)


class State:
    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self._settings: Settings | None = None
        self._warned = False

    def settings(self, *, destinations: bool = True, **overrides: Any) -> Settings:
        """The settings; ``destinations=False`` skips the enabled sinks' credential checks.

        Commands that never deliver (query, flags) use that: they must not ask for
        credentials they do not use.
        """
        from etl.config import ConfigError, unknown_env_warnings
        from sinks.settings import Settings, load_settings

        if not self._warned:
            self._warned = True
            for line in unknown_env_warnings(Settings):
                click.echo(f"etl: {line}", err=True)
        if not destinations:
            overrides = {"sinks": ["duckdb"], "role": "all", **overrides}
        if self._settings is None or overrides:
            try:
                loaded = load_settings(**overrides)
            except ConfigError as exc:
                raise UserError(" ".join(str(exc).split())) from None
            if overrides:
                return loaded
            self._settings = loaded
        return self._settings

    def kafka_settings(self, **overrides: Any) -> Settings:
        """The settings, once a bootstrap broker answers (within a few seconds, else exit 2)."""
        from etl import kafka_tools

        settings = self.settings(**overrides)
        try:
            kafka_tools.wait_for_broker(settings, kafka_tools.COMMAND_CONNECT_TIMEOUT)
        except kafka_tools.BrokerUnreachable as exc:
            raise UserError(exc.args[0]) from None
        return settings


def check_warehouse(path: Path | str, variable: str = "ETL_DUCKDB__PATH") -> None:
    from etl.config import duckdb_file_problem

    problem = duckdb_file_problem(path, variable)
    if problem:
        raise UserError(problem)


def state() -> State:
    return click.get_current_context().find_object(State)  # type: ignore[return-value]


def emit_json(doc: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(doc, default=str).decode() + "\n")
    sys.stdout.flush()


def split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "terminal_width": 100,
    }
)
@click.version_option(
    _version(), "--version", prog_name="etl", message="%(prog)s (analytics-etl) %(version)s"
)
@click.option(
    "--debug", is_flag=True, default=False, help="Show the traceback of an unexpected error."
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """analytics-etl: product-analytics events from Kafka to PostHog, RudderStack and warehouses.

    Settings come from ETL_* environment variables (and the vendors' usual
    names); see the README's configuration table.
    """
    ctx.obj = State(debug)


# ------------------------------------------------------------------ worker
@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("faust_args", nargs=-1, type=click.UNPROCESSED)
@example("ETL_ROLE=sink:duckdb etl worker")
def worker(faust_args: tuple[str, ...]) -> None:
    """Run this process's role (ETL_ROLE: all, normalize or sink:<name>) until stopped.

    With role all (the default), one process per role is supervised on this machine.
    Extra arguments go to Faust's worker.
    """
    from streams.worker import run

    settings = state().settings()
    run(settings, list(faust_args))


# -------------------------------------------------------------------- demo
@cli.command()
@click.option(
    "--events", type=int, default=20_000, show_default=True, help="Synthetic events to produce."
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON-lines file: each line is one Kafka message value.",
)
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("warehouse.duckdb"),
    show_default=True,
    help="DuckDB warehouse file.",
)
@click.option(
    "--sinks", default=None, help="Comma-separated sinks (default: ETL_SINKS, else duckdb)."
)
@click.option(
    "--partitions",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Partitions per topic.",
)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="Seed of the synthetic stream."
)
@click.option(
    "--json", "json_output", is_flag=True, default=False, help="Print one JSON summary on stdout."
)
@example("etl demo --events 5000 --json")
def demo(
    events: int,
    input_path: Path | None,
    warehouse: Path,
    sinks: str | None,
    partitions: int,
    seed: int,
    json_output: bool,
) -> None:
    """Run the main job on embedded defaults: broker, workers, synthetic stream, summary."""
    from ops.demo import print_summary, run_demo

    check_warehouse(warehouse, "--warehouse")
    overrides = {"sinks": split(sinks)} if sinks else {}
    settings = state().settings(**overrides)
    result = run_demo(
        settings,
        events=events,
        input_path=input_path,
        warehouse=warehouse,
        partitions=partitions,
        seed=seed,
    )
    print_summary(result, to_stderr=json_output)
    if json_output:
        emit_json(result.as_json())


# --------------------------------------------------------------------- dev
@cli.command()
@click.option(
    "--dir",
    "work_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".etl-dev"),
    show_default=True,
    help="Where the stack keeps its warehouse, state, logs and env.sh.",
)
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=2000,
    show_default=True,
    help="Synthetic events to send through first.",
)
@click.option(
    "--partitions",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Partitions per topic.",
)
@example("etl dev        # then, in another shell: source .etl-dev/env.sh && etl status")
def dev(work_dir: Path, events: int, partitions: int) -> None:
    """Start the broker and the workers, and leave them running for the Operations commands.

    Prints the environment to export (also written to DIR/env.sh) and runs
    until Ctrl-C.
    """
    from ops import dev as ops

    settings = state().settings()
    if work_dir.exists() and any(work_dir.iterdir()) and not (work_dir / "env.sh").exists():
        raise UserError(f"--dir {str(work_dir)!r} is not empty and not an etl dev directory")
    stack = ops.start(settings, work_dir, events=events, partitions=partitions)
    ops.print_exports(stack)
    click.echo(ops.banner(stack), err=True)
    code = ops.run_until_stopped(stack, lambda line: click.echo(line, err=True))
    if code:
        raise SystemExit(code)


# ------------------------------------------------------------------- query
@cli.command()
@click.argument("sql", nargs=-1, required=True)
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DuckDB warehouse file (default: ETL_DUCKDB__PATH).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@example('etl query "SELECT event, count(*) FROM events GROUP BY 1"')
def query(sql: tuple[str, ...], warehouse: Path | None, fmt: str) -> None:
    """Run read-only SQL against the embedded warehouse."""
    from ops.query import QueryError, run_query

    path = warehouse or state().settings(destinations=False).duckdb.path
    check_warehouse(path, "--warehouse" if warehouse else "ETL_DUCKDB__PATH")
    try:
        run_query(" ".join(sql), Path(path), fmt)
    except QueryError as exc:
        raise UserError(f"query: {exc}") from None


# ------------------------------------------------------------------ replay
@cli.command()
@click.option(
    "--source",
    type=click.Choice(["raw", "normalized"]),
    default="raw",
    show_default=True,
    help="raw: events.raw through the normalize stage again; "
    "normalized: events.normalized to the sink stages.",
)
@click.option(
    "--from",
    "window_from",
    default=None,
    help="Window start: ISO 8601, epoch ms, or relative (-3d, -2h).",
)
@click.option(
    "--to",
    "window_to",
    default=None,
    help="Window end (exclusive); default: the topic's end at planning.",
)
@click.option(
    "--range",
    "ranges",
    multiple=True,
    help="Explicit offsets PARTITION:START-END (END exclusive) or PARTITION:START-; repeatable.",
)
@click.option(
    "--sinks", default=None, help="Target sinks, comma-separated (default: the enabled sinks)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    default=False,
    help="Count what would be replayed per partition and sink.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most N events per second.",
)
@click.option(
    "--id",
    "replay_id",
    default=None,
    help="Replay id (checkpoint name); default: from the arguments.",
)
@click.option(
    "--restart", is_flag=True, default=False, help="Ignore an unfinished checkpoint and start over."
)
@click.option("--no-progress", is_flag=True, default=False, help="No progress bar.")
@click.option(
    "--json", "json_output", is_flag=True, default=False, help="Print one JSON summary on stdout."
)
@example("etl replay --source raw --from -2h --sinks duckdb --dry-run")
def replay(
    source: str,
    window_from: str | None,
    window_to: str | None,
    ranges: tuple[str, ...],
    sinks: str | None,
    dry_run: bool,
    rate: float | None,
    replay_id: str | None,
    restart: bool,
    no_progress: bool,
    json_output: bool,
) -> None:
    """Replay a window of a topic into chosen sinks through the worker's own stages.

    Idempotent (sinks upsert on message_id), resumable from a checkpoint, and
    the live consumer groups are never touched.
    """
    settings = state().kafka_settings()  # before the heavy imports: a bad setup fails fast
    from ops.replay import ReplayInterrupted, ReplayState, make_plan, run_replay, state_path
    from ops.replay import dry_run as count_window
    from sinks.settings import sink_names

    targets = split(sinks) or list(settings.sinks)
    unknown = [s for s in targets if s not in sink_names()]
    if unknown:
        raise UserError(
            f"--sinks: unknown sink {', '.join(unknown)}; choose from {', '.join(sink_names())}"
        )
    if set(targets) - set(settings.checked_sinks()):
        # A target sink must pass the same configuration checks as an enabled one.
        settings = state().settings(sinks=list(dict.fromkeys([*settings.sinks, *targets])))
    try:
        plan = make_plan(
            settings,
            source=source,
            sinks=targets,
            window_from=window_from,
            window_to=window_to,
            ranges=list(ranges),
            replay_id=replay_id,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if dry_run:
        doc = count_window(settings, plan)
    else:
        existing = ReplayState.load(state_path(settings, plan.replay_id))
        if existing is not None and not existing.done and not restart:
            plan = existing.plan  # resume with the window planned the first time
            click.echo(f"etl: resuming replay {plan.replay_id} from its checkpoint", err=True)
        try:
            doc = run_replay(
                settings,
                plan,
                rate=rate,
                restart=restart,
                progress=not no_progress and not json_output,
            )
        except ReplayInterrupted as exc:
            raise Interrupted(str(exc)) from None
    _print_replay(doc)
    if json_output:
        emit_json(doc)


def _print_replay(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    dry = "(dry run) " if doc["dry_run"] else ""
    table = Table(
        title=f"replay {doc['replay_id']} {dry}{doc['topic']} -> {', '.join(doc['sinks'])}"
    )
    for col in ("partition", "start", "end", "records", "events", "rejected"):
        table.add_column(col, justify="right")
    for p, c in doc.get("partitions", {}).items():
        table.add_row(
            p,
            str(c["start"]),
            str(c["end"]),
            str(c["records"]),
            str(c["events"]),
            str(c["rejected"]),
        )
    if not doc.get("partitions"):
        for p, (s, e) in doc["ranges"].items():
            table.add_row(p, str(s), str(e), "", "", "")
    console = Console(stderr=True)
    console.print(table)
    tail = (
        ""
        if doc["dry_run"]
        else f", {doc.get('events_per_second')} events/s, resumed={doc['resumed']}"
    )
    console.print(
        f"records {doc['records']}, events {doc['events']}, per sink {doc['by_sink']}{tail}"
    )


# ----------------------------------------------------------------- offsets
@cli.command()
@click.argument("action", type=click.Choice(["show", "reset"]))
@click.option(
    "--sink",
    "name",
    required=True,
    help="Sink whose group (etl-sink-<name>) to act on; 'normalize' for the normalizer's group.",
)
@click.option(
    "--to-time",
    default=None,
    help="Reset to the first record at/after this time (ISO 8601 or -2h).",
)
@click.option(
    "--to-offset",
    multiple=True,
    help="Reset PARTITION:OFFSET (first topic of the group) or TOPIC:PARTITION:OFFSET; repeatable.",
)
@click.option(
    "--to-earliest", is_flag=True, default=False, help="Reset to the beginning of every partition."
)
@click.option(
    "--to-latest", is_flag=True, default=False, help="Reset to the true end of every partition."
)
@click.option(
    "--force", is_flag=True, default=False, help="Reset even while the group has live members."
)
@click.option("--json", "json_output", is_flag=True, default=False, help="Print JSON.")
@example("etl offsets show --sink duckdb")
def offsets(
    action: str,
    name: str,
    to_time: str | None,
    to_offset: tuple[str, ...],
    to_earliest: bool,
    to_latest: bool,
    force: bool,
    json_output: bool,
) -> None:
    """Show or reset a role's consumer-group offsets."""
    settings = state().kafka_settings()  # before the heavy imports: a bad setup fails fast
    from etl.offsets import GroupBusyError, group_offsets, reset, rows_as_json
    from etl.role import Role
    from streams.roles import consumed_topics

    if name != "normalize" and name not in settings.sinks:
        raise UserError(
            f"--sink {name!r} is not enabled (ETL_SINKS={','.join(settings.sinks)}); "
            "name an enabled sink or 'normalize'"
        )
    role = Role("normalize") if name == "normalize" else Role.for_sink(name)
    group, topics = settings.group(role), consumed_topics(settings, role)
    if action == "reset":
        try:
            moved = reset(
                settings,
                group,
                topics,
                force=force,
                to_time=to_time,
                to_offsets=list(to_offset),
                to_earliest=to_earliest,
                to_latest=to_latest,
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None
        except GroupBusyError as exc:
            raise Failure(str(exc)) from None
        moved_text = ", ".join(f"{tp.topic}:{tp.partition}={o}" for tp, o in sorted(moved.items()))
        click.echo(f"etl: {group}: committed {moved_text}", err=True)
    rows = group_offsets(settings, group, topics)
    if json_output:
        emit_json(
            {"group": group, "partitions": rows_as_json(rows), "lag": sum(r.lag for r in rows)}
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{group}  lag {sum(r.lag for r in rows)}")
    for col in ("topic", "partition", "committed", "end", "lag"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    for r in rows:
        committed = "-" if r.committed is None else str(r.committed)
        table.add_row(r.topic, str(r.partition), committed, str(r.end), str(r.lag))
    Console().print(table)


# --------------------------------------------------------------------- dlq
@cli.command()
@click.argument("action", type=click.Choice(["list", "show", "requeue", "purge"]))
@click.option("--reason", default=None, help="Only these reasons (comma-separated).")
@click.option("--event", default=None, help="Only these event names (comma-separated).")
@click.option("--stage", default=None, help="Only these stages (normalize, sink:<name>).")
@click.option("--since", default=None, help="Rejected at or after (ISO 8601 or -2h).")
@click.option("--until", default=None, help="Rejected before (ISO 8601 or -2h).")
@click.option("--limit", type=int, default=50, show_default=True, help="show: at most this many.")
@click.option(
    "--sinks",
    default=None,
    help="requeue: where mapper rejections go (default: the enabled sinks).",
)
@click.option(
    "--before", default=None, help="purge: only dead letters before this time (default: all)."
)
@click.option(
    "--from-warehouse",
    is_flag=True,
    default=False,
    help="list: count from rejected_events instead.",
)
@click.option(
    "--yes", is_flag=True, default=False, help="Do not ask for confirmation (requeue, purge)."
)
@click.option("--json", "json_output", is_flag=True, default=False, help="Print JSON.")
@example("etl dlq requeue --reason invalid_property --since -1d --yes")
def dlq(
    action: str,
    reason: str | None,
    event: str | None,
    stage: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    sinks: str | None,
    before: str | None,
    from_warehouse: bool,
    yes: bool,
    json_output: bool,
) -> None:
    """Dead letters: list them by reason, show them, requeue them through the stages, purge."""
    if action == "list" and from_warehouse:
        settings = state().settings(destinations=False)
        check_warehouse(settings.duckdb.path)
    else:
        settings = state().kafka_settings()  # before the heavy imports: a bad setup fails fast
    from ops import dlq as ops
    from ops.status import named_events

    try:
        filters = ops.Filters.parse(reason, event, stage, since, until)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if action == "list":
        doc = (
            ops.summarize_warehouse(settings.duckdb.path)
            if from_warehouse
            else named_events(ops.summarize(ops.read_dead_letters(settings, filters)))
        )
        if json_output:
            emit_json(doc)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"dead letters: {doc['total']}")
        for col in ("stage", "reason", "count"):
            table.add_column(col, justify="right" if col == "count" else "left")
        for row in doc["by_stage_reason"]:
            table.add_row(row["stage"], row["reason"], str(row["count"]))
        Console().print(table)
    elif action == "show":
        for d in ops.read_dead_letters(settings, filters)[:limit]:
            doc = ops.show_json(d, None if json_output else 300)
            if json_output:
                emit_json(doc)
            else:
                where = (
                    f"{doc.get('source_topic')}:{doc.get('source_partition')}"
                    f"@{doc.get('source_offset')}"
                )
                click.echo(
                    f"[{doc.get('rejected_at')}] {doc.get('stage')} {doc.get('reason')} "
                    f"field={doc.get('field')} event={doc.get('event')} at {where}\n"
                    f"  {doc.get('error')}\n"
                    f"  {doc.get('raw_payload')}"
                )
    elif action == "requeue":
        letters = ops.read_dead_letters(settings, filters)
        targets = split(sinks) or None
        if not letters:
            click.echo("etl: no dead letters match", err=True)
            result = ops.RequeueResult()
        else:
            if not yes and not click.confirm(f"requeue {len(letters)} dead letters?", err=True):
                raise Failure("aborted")
            if targets and set(targets) - set(settings.checked_sinks()):
                settings = state().settings(sinks=list(dict.fromkeys([*settings.sinks, *targets])))
            result = ops.requeue(settings, letters, targets)
        summary = result.as_json()
        click.echo(
            f"etl: requeued {summary['requeued']}: {summary['normalized']} normalized, "
            f"{summary['rejected_again']} rejected again; delivered per sink {summary['by_sink']}; "
            f"skipped {len(result.skipped_cut)} with a cut payload",
            err=True,
        )
        if json_output:
            emit_json(summary)
    else:
        question = (
            f"purge dead letters{' before ' + before if before else ''} "
            f"from {settings.kafka.dlq_topic}? "
            "They stop showing in list/show/requeue (the warehouse keeps rejected_events)."
        )
        if not yes and not click.confirm(question, err=True):
            raise Failure("aborted")
        try:
            marks = ops.purge(settings, before)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        doc = {
            "group": ops.purge_group(settings),
            "watermark": {f"{tp.topic}:{tp.partition}": o for tp, o in sorted(marks.items())},
        }
        click.echo(f"etl: purge watermark {doc['watermark']}", err=True)
        if json_output:
            emit_json(doc)


# ------------------------------------------------------------------ status
@cli.command()
@click.option(
    "--metrics",
    "metrics_urls",
    default=None,
    help="Workers' /metrics URLs, comma-separated (default: ETL_METRICS_URLS, else the local "
    "workers' run files in the data dir).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between samples for rates (--watch: between frames).",
)
@click.option("--no-dlq", is_flag=True, default=False, help="Skip reading the DLQ topic.")
@click.option(
    "--watch",
    is_flag=True,
    default=False,
    help="A live screen per role: lag, rates, dead-letter growth, sink health, back-off.",
)
@click.option("--json", "json_output", is_flag=True, default=False, help="Print JSON.")
@example("etl status --json", "etl status --watch")
def status(
    metrics_urls: str | None, interval: float, no_dlq: bool, watch: bool, json_output: bool
) -> None:
    """Offsets, lag, rates, backpressure, gating and dead letters per group and partition."""
    if watch and json_output:
        raise UserError("--watch draws a screen; use --json without --watch")
    settings = state().kafka_settings()  # before the heavy imports: a bad setup fails fast
    from ops import status as ops

    if watch:
        ops.watch(
            settings,
            metrics_urls=split(metrics_urls),
            interval=max(interval, 0.5),
            include_dlq=not no_dlq,
        )
        return
    urls = ops.metrics_targets(settings, split(metrics_urls))
    doc = ops.collect(settings, metrics_urls=urls, interval=interval, include_dlq=not no_dlq)
    if json_output:
        emit_json(doc)
    else:
        ops.render(doc)


# ---------------------------------------------------------------- validate
@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    default=False,
    help="One JSON document: the summary and each line's outcome.",
)
@example("etl validate events.jsonl --json")
def validate(path: Path, json_output: bool) -> None:
    """Run the normalize stage (governance included) on each line of a JSON-lines file.

    No broker and no warehouse. Exits 1 when any line is rejected.
    """
    from ops.validate import print_outcomes, validate_file

    report = validate_file(state().settings(), path)
    print_outcomes(report, json_output=json_output)
    if report.rejected:
        raise SystemExit(1)


# ------------------------------------------------------------------- flags
@cli.command()
@click.argument("action", type=click.Choice(["list", "get", "set", "delete", "migrate"]))
@click.argument("key", required=False)
@click.option(
    "--enabled/--disabled", "enabled", default=True, show_default=True, help="set: on or off."
)
@click.option(
    "--rollout",
    type=click.FloatRange(0, 100),
    default=None,
    help="set: percentage of eligible users.",
)
@click.option(
    "--variants", default=None, help='set: "control:50,test:50" or a JSON list of variants.'
)
@click.option(
    "--workspaces", default=None, help="set: only these workspaces are eligible (comma-separated)."
)
@click.option(
    "--users", default=None, help="set: only these distinct_ids are eligible (comma-separated)."
)
@click.option(
    "--bucket-by", type=click.Choice(["user", "workspace"]), default="user", show_default=True
)
@click.option("--description", default=None, help="set: what the flag is for.")
@click.option("--distinct-id", default=None, help="get: evaluate for this user.")
@click.option("--workspace", default=None, help="get: evaluate for this workspace.")
@click.option("--json", "json_output", is_flag=True, default=False, help="Print JSON.")
@example("etl flags set enable_guardrails_tracing --enabled --workspaces ws_1")
def flags(action: str, key: str | None, json_output: bool, **opts: Any) -> None:
    """The flag database: list, get (evaluate), set, delete, migrate."""
    from ops.flags import FlagCommandError, run_flags_command

    try:
        out = run_flags_command(
            [action, *([key] if key else [])],
            state().settings(destinations=False),
            json_output=json_output,
            **opts,
        )
    except FlagCommandError as exc:
        raise UserError(f"flags: {exc}") from None
    click.echo(out)


flags.help = (
    (flags.help or "")
    + EXAMPLE
    + "etl flags set enable_guardrails_tracing --enabled --workspaces ws_1"
)


# -------------------------------------------------------------------- plan
@cli.group()
def plan() -> None:
    """Event contracts: check a file against the tracking plan, or export it as JSON Schema."""


@plan.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Tracking-plan file (default: contracts.plan_path).",
)
@click.option("--json", "json_output", is_flag=True, default=False, help="JSON lines + summary.")
def plan_check(path: Path, plan_path: Path | None, json_output: bool) -> None:
    """Check each line of a JSON-lines file against the tracking plan (normalize stage, offline).

    Exits 1 when any event violates the plan.
    """

    from etl.config import ConfigError
    from ops.plan import check_file, print_report

    settings = state().settings()
    if plan_path is not None:
        if not plan_path.is_file():
            raise UserError(f"--plan: {plan_path} is not a file")
        settings = settings.model_copy(
            update={"contracts": settings.contracts.model_copy(update={"plan_path": plan_path})}
        )
    try:
        report = check_file(settings, path)
    except ConfigError as exc:
        message = str(exc)
        if plan_path is not None:
            message = message.replace("contracts.plan_path (ETL_CONTRACTS__PLAN_PATH)", "--plan")
        raise UserError(message) from None
    print_report(report, json_output=json_output)
    if report.violations:
        raise SystemExit(1)


plan_check.help = (plan_check.help or "") + EXAMPLE + "etl plan check events.jsonl --plan plan.yaml"


@plan.command("export")
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Tracking-plan file (default: contracts.plan_path).",
)
def plan_export(plan_path: Path | None) -> None:
    """Print the tracking plan (platform events included) as JSON Schema."""
    from mappers.contracts import PlanError
    from ops.plan import export_schema

    chosen = plan_path if plan_path is not None else state().settings().contracts.plan_path
    try:
        click.echo(export_schema(chosen))
    except PlanError as exc:
        raise UserError(f"{'--plan' if plan_path else 'contracts.plan_path'}: {exc}") from None


# ------------------------------------------------------------------ forget
@cli.command()
@click.option(
    "--distinct-id",
    "distinct_ids",
    multiple=True,
    required=True,
    help="A person to forget (repeatable); their aliases are followed.",
)
@click.option("--yes", is_flag=True, default=False, help="Confirm: this deletes data.")
@click.option("--json", "json_output", is_flag=True, default=False, help="Print JSON.")
def forget(distinct_ids: tuple[str, ...], yes: bool, json_output: bool) -> None:
    """Erase people from every enabled destination and suppress their later events.

    Safe to re-run: a destination already erased for the same ids is skipped.
    Exits 1 when a destination failed (re-run to finish).
    """
    from ops.forget import ForgetError
    from ops.forget import forget as run_forget

    if not yes:
        raise UserError("forget deletes data: pass --yes to confirm")
    try:
        result = run_forget(state().settings(), list(distinct_ids))
    except ForgetError as exc:
        raise UserError(f"forget: {exc}") from None
    if json_output:
        emit_json(result)
    else:
        for name, outcome in result["destinations"].items():
            rows = outcome["rows_deleted"]
            note = " (already done)" if outcome.get("skipped") else ""
            extra = f", {rows} rows" if rows is not None else ""
            err = f": {outcome['detail'].get('error')}" if outcome["status"] == "failed" else ""
            click.echo(f"{name}: {outcome['status']}{extra}{note}{err}")
        click.echo(
            f"request {result['request_id']}: {result['status']}; {result['ids']} ids "
            f"(+{result['linked_ids']} linked) suppressed",
            err=True,
        )
    if result["status"] != "complete":
        raise SystemExit(1)


forget.help = (forget.help or "") + EXAMPLE + "etl forget --distinct-id user_42 --yes --json"


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point: click's own handling, plus one line (not a traceback) for bugs."""
    from kafka.errors import KafkaError

    from etl.config import ConfigError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="etl", standalone_mode=False)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "etl"
        click.echo(f"etl: {exc.format_message()} (see '{command} --help')", err=True)
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        click.echo("etl: aborted", err=True)
        raise SystemExit(130) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except KafkaError as exc:
        # The broker failed the command (not a bug in it): one line, exit 1.
        name = type(exc).__name__
        text = " ".join(str(a) for a in exc.args)
        click.echo(f"etl: Kafka: {name}{': ' + text if text else ''}", err=True)
        if debug:
            traceback.print_exc()
        raise SystemExit(1) from None
    except KeyboardInterrupt as exc:
        # One line; an interrupted replay says where it resumes.
        click.echo(f"etl: {exc}" if str(exc) else "etl: interrupted", err=True)
        raise SystemExit(130) from None
    except ConfigError as exc:  # found after settings loaded, e.g. a bad tracking plan
        click.echo(f"etl: {exc}", err=True)
        raise SystemExit(2) from None
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            click.echo(
                f"etl: internal error: {type(exc).__name__}: {exc} "
                "(run with --debug for the traceback)",
                err=True,
            )
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
