"""Operator commands: ``etl replay``, ``etl offsets``, ``etl dlq``, ``etl status``.

Thin click front-ends; the logic lives in ``etl.replay``, ``etl.offsets``,
``etl.dlq`` and ``etl.status``.  Every command takes ``--json`` for scripts.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import orjson
from faust.cli import AppCommand, argument, option

from streams.app import app, settings


def _emit_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, default=str).decode() + "\n")
    sys.stdout.flush()


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"etl: {message}", err=True)
    raise SystemExit(code)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


@app.command(
    option("--source", type=click.Choice(["raw", "normalized"]), default="raw", show_default=True,
           help="raw: events.raw through the mappers again; normalized: events.normalized straight to the sinks."),
    option("--from", "window_from", default=None, help="Window start: ISO 8601, epoch ms, or relative (-3d, -2h, -30m)."),
    option("--to", "window_to", default=None, help="Window end (exclusive); default: the topic's end when the replay is planned."),
    option("--range", "ranges", multiple=True, help="Explicit offsets PARTITION:START-END (END exclusive) or PARTITION:START-; repeatable."),
    option("--sinks", default=None, help="Target sinks, comma-separated (default: the enabled sinks)."),
    option("--dry-run", is_flag=True, default=False, help="Count what would be replayed per partition and sink; deliver nothing."),
    option("--rate", type=float, default=None, help="Limit to N events per second."),
    option("--id", "replay_id", default=None, help="Replay id (checkpoint name); default: derived from the arguments."),
    option("--restart", is_flag=True, default=False, help="Ignore an unfinished checkpoint and start the window over."),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
    option("--json", "json_output", is_flag=True, default=False, help="End with one JSON summary line."),
)
async def replay(self: AppCommand, source: str, window_from: str | None, window_to: str | None, ranges: tuple[str, ...],
                 sinks: str | None, dry_run: bool, rate: float | None, replay_id: str | None, restart: bool,
                 no_progress: bool, json_output: bool) -> None:
    """Replay a window of a topic into chosen sinks (idempotent, resumable, live groups untouched)."""
    from etl.config import KNOWN_SINKS
    from etl.replay import ReplayState, dry_run as count_window, make_plan, run_replay, state_path

    targets = _split(sinks) or list(settings.sinks)
    unknown = [s for s in targets if s not in KNOWN_SINKS]
    if unknown:
        raise self.UsageError(f"unknown sink(s) {', '.join(unknown)}; choose from {', '.join(KNOWN_SINKS)}")
    if rate is not None and rate <= 0:
        raise self.UsageError("--rate must be positive")
    try:
        plan = await asyncio.to_thread(make_plan, settings, source=source, sinks=targets, window_from=window_from,
                                       window_to=window_to, ranges=list(ranges), replay_id=replay_id)
    except ValueError as exc:
        raise self.UsageError(str(exc)) from None
    if dry_run:
        doc = await asyncio.to_thread(count_window, settings, plan)
        _print_replay(doc)
        if json_output:
            _emit_json(doc)
        return
    existing = ReplayState.load(state_path(settings, plan.replay_id))
    if existing is not None and not existing.done and not restart:
        plan = existing.plan  # resume with the window planned the first time
        click.echo(f"etl: resuming replay {plan.replay_id} from its checkpoint", err=True)
    doc = await asyncio.to_thread(run_replay, settings, plan, rate=rate, restart=restart, progress=not no_progress and not json_output)
    _print_replay(doc)
    if json_output:
        _emit_json(doc)


def _print_replay(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"replay {doc['replay_id']} {'(dry run) ' if doc['dry_run'] else ''}{doc['topic']} -> {', '.join(doc['sinks'])}"
    table = Table(title=title)
    for col in ("partition", "start", "end", "records", "events", "rejected"):
        table.add_column(col, justify="right")
    for p, c in doc.get("partitions", {}).items():
        table.add_row(p, str(c["start"]), str(c["end"]), str(c["records"]), str(c["events"]), str(c["rejected"]))
    if not doc.get("partitions"):
        for p, (s, e) in doc["ranges"].items():
            table.add_row(p, str(s), str(e), "", "", "")
    console = Console(stderr=True)
    console.print(table)
    console.print(f"records {doc['records']}, events {doc['events']}, per sink {doc['by_sink']}"
                  + (f", {doc.get('events_per_second')} events/s, resumed={doc['resumed']}" if not doc["dry_run"] else ""))


@app.command(
    argument("action", type=click.Choice(["show", "reset"])),
    option("--sink", "name", required=True, help="Sink whose group (etl-sink-<name>) to act on; 'normalize' for the normalizer's group."),
    option("--to-time", default=None, help="Reset to the first record at/after this time (ISO 8601 or -2h)."),
    option("--to-offset", multiple=True, help="Reset PARTITION:OFFSET (first topic of the group) or TOPIC:PARTITION:OFFSET; repeatable."),
    option("--to-earliest", is_flag=True, default=False, help="Reset to the beginning of every partition."),
    option("--to-latest", is_flag=True, default=False, help="Reset to the true end of every partition (skip everything)."),
    option("--force", is_flag=True, default=False, help="Reset even while the group has live members."),
    option("--json", "json_output", is_flag=True, default=False, help="Print JSON."),
)
async def offsets(self: AppCommand, action: str, name: str, to_time: str | None, to_offset: tuple[str, ...],
                  to_earliest: bool, to_latest: bool, force: bool, json_output: bool) -> None:
    """Show or reset a sink's consumer-group offsets: etl offsets show|reset --sink NAME"""
    from etl.offsets import GroupBusyError, group_for, group_offsets, reset, rows_as_json

    if name != "normalize" and name not in settings.sinks:
        raise self.UsageError(f"--sink {name!r} is not enabled (ETL_SINKS={','.join(settings.sinks)}); or use 'normalize'")
    group, topics = group_for(settings, name)
    if action == "reset":
        try:
            moved = await asyncio.to_thread(reset, settings, name, force=force, to_time=to_time, to_offsets=list(to_offset),
                                            to_earliest=to_earliest, to_latest=to_latest)
        except ValueError as exc:
            raise self.UsageError(str(exc)) from None
        except GroupBusyError as exc:
            _fail(str(exc))
        click.echo(f"etl: {group}: committed " + ", ".join(f"{tp.topic}:{tp.partition}={o}" for tp, o in sorted(moved.items())), err=True)
    rows = await asyncio.to_thread(group_offsets, settings, group, topics)
    if json_output:
        _emit_json({"group": group, "partitions": rows_as_json(rows), "lag": sum(r.lag for r in rows)})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{group}  lag {sum(r.lag for r in rows)}")
    for col in ("topic", "partition", "committed", "end", "lag"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    for r in rows:
        table.add_row(r.topic, str(r.partition), "-" if r.committed is None else str(r.committed), str(r.end), str(r.lag))
    Console().print(table)


@app.command(
    argument("action", type=click.Choice(["list", "show", "requeue", "purge"])),
    option("--reason", default=None, help="Only these reasons (comma-separated)."),
    option("--event", default=None, help="Only these event names (comma-separated)."),
    option("--stage", default=None, help="Only these stages (normalize, sink:<name>)."),
    option("--since", default=None, help="Rejected at or after (ISO 8601 or -2h)."),
    option("--until", default=None, help="Rejected before (ISO 8601 or -2h)."),
    option("--limit", type=int, default=50, show_default=True, help="show: at most this many."),
    option("--before", default=None, help="purge: only dead letters before this time (default: all)."),
    option("--from-warehouse", is_flag=True, default=False, help="list: count from the warehouse's rejected_events instead."),
    option("--yes", is_flag=True, default=False, help="Do not ask for confirmation (requeue, purge)."),
    option("--json", "json_output", is_flag=True, default=False, help="Print JSON."),
)
async def dlq(self: AppCommand, action: str, reason: str | None, event: str | None, stage: str | None, since: str | None,
              until: str | None, limit: int, before: str | None, from_warehouse: bool, yes: bool, json_output: bool) -> None:
    """Dead letters: etl dlq list|show|requeue|purge"""
    from etl import dlq as ops

    try:
        filters = ops.Filters.parse(reason, event, stage, since, until)
    except ValueError as exc:
        raise self.UsageError(str(exc)) from None
    if action == "list":
        doc = (await asyncio.to_thread(ops.summarize_warehouse, settings.duckdb.path) if from_warehouse
               else ops.summarize(await asyncio.to_thread(ops.read_dead_letters, settings, filters)))
        if json_output:
            _emit_json(doc)
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
        letters = (await asyncio.to_thread(ops.read_dead_letters, settings, filters))[:limit]
        for d in letters:
            doc = ops.show_json(d, None if json_output else 300)
            if json_output:
                _emit_json(doc)
            else:
                click.echo(f"[{doc.get('rejected_at')}] {doc.get('stage')} {doc.get('reason')} field={doc.get('field')} "
                           f"event={doc.get('event')} at {doc.get('source_topic')}:{doc.get('source_partition')}@{doc.get('source_offset')}\n"
                           f"  {doc.get('error')}\n  {doc.get('raw_payload')}")
    elif action == "requeue":
        letters = await asyncio.to_thread(ops.read_dead_letters, settings, filters)
        if not letters:
            click.echo("etl: no dead letters match", err=True)
            result = ops.RequeueResult()
        else:
            if not yes and not click.confirm(f"requeue {len(letters)} dead letters?", err=True):
                _fail("aborted", 1)
            result = await asyncio.to_thread(ops.requeue, settings, letters)
        click.echo(f"etl: requeued {result.requeued_raw} to {settings.kafka.raw_topic}, {result.requeued_normalized} to "
                   f"{settings.kafka.normalized_topic}; skipped {len(result.skipped_cut)} with a cut payload", err=True)
        if json_output:
            _emit_json(result.as_json())
    else:
        if not yes and not click.confirm(
            f"purge dead letters{' before ' + before if before else ''} from {settings.kafka.dlq_topic}? "
            "They stop showing in list/show/requeue (the warehouse keeps rejected_events).", err=True
        ):
            _fail("aborted", 1)
        try:
            marks = await asyncio.to_thread(ops.purge, settings, before)
        except ValueError as exc:
            raise self.UsageError(str(exc)) from None
        doc = {"group": ops.purge_group(settings), "watermark": {f"{tp.topic}:{tp.partition}": o for tp, o in sorted(marks.items())}}
        click.echo(f"etl: purge watermark {doc['watermark']}", err=True)
        if json_output:
            _emit_json(doc)


@app.command(
    option("--metrics", "metrics_urls", default=None, help="Workers' /metrics URLs, comma-separated (rates, pauses, gating)."),
    option("--interval", type=float, default=2.0, show_default=True, help="Seconds between the two samples for rates (0 = one sample)."),
    option("--no-dlq", is_flag=True, default=False, help="Skip reading the DLQ topic."),
    option("--json", "json_output", is_flag=True, default=False, help="Print JSON."),
)
async def status(self: AppCommand, metrics_urls: str | None, interval: float, no_dlq: bool, json_output: bool) -> None:
    """One screen: offsets, lag, rates, backpressure, gating and dead letters per group and partition."""
    from etl.status import collect, render

    doc = await asyncio.to_thread(collect, settings, metrics_urls=_split(metrics_urls), interval=interval, include_dlq=not no_dlq)
    if json_output:
        _emit_json(doc)
    else:
        render(doc)
