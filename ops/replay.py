"""Replay and backfill: re-deliver a window of a topic to chosen sinks.

A replay reads ``events.raw`` (through the normalize stage again) or
``events.normalized`` (straight to the sink stages) for a window of offsets,
and runs the worker's own stages in this process
(:class:`ops.inprocess.InProcessPipeline`): flag decisions, gates, PII
redaction and delivery are exactly the live worker's.  Dead letters go to the
DLQ topic.

* **Live groups untouched.** The consumer has no group id and assigns the
  partitions itself, so it never joins or commits for any group.
* **Window.** ``--from/--to`` resolve to the exact first offset at or after
  each time (:func:`etl.kafka_tools.offsets_at_times`); a ``--to`` with no
  record after it, or no ``--to``, means the *true* end at planning time
  (:func:`etl.kafka_tools.true_end_offsets`), so the last records are never lost
  to the broker's under-reported high watermark.  ``--range P:START-END``
  gives offsets directly (END exclusive; ``P:START-`` = to the end).
* **Checkpoint and resume.** The resolved plan and, per partition, the next
  offset to deliver are kept in ``<data_dir>/replay/<id>.json``, written after
  every batch that all target sinks accepted.  The id defaults to a hash of the
  command's arguments, so running the same command again after an interruption
  resumes from the checkpoint with the plan it made the first time.  A finished
  replay run again starts over (sinks MERGE on ``message_id``, so nothing
  doubles); ``--restart`` starts over an unfinished one.
* **Idempotent.** Every sink is idempotent on ``message_id``, and dead letters
  on their ``rejection_id``.
* **Interrupted.** SIGINT or SIGTERM ends the sinks' retries (nothing is
  isolated or dead-lettered for it), lets the write in progress finish, keeps
  the checkpoint at the last batch every sink accepted and raises
  :class:`ReplayInterrupted` (``etl replay`` exits 130 with one line saying
  where the same command resumes).  A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from etl import kafka_tools
from etl.offsets import parse_time, to_ms
from mappers.envelope import split_unified
from ops.inprocess import InProcessPipeline
from sinks.settings import Settings

log = logging.getLogger("etl.replay")

SOURCES = ("raw", "normalized")


class ReplayInterrupted(KeyboardInterrupt):
    """A replay stopped by a signal; its message says where running it again resumes."""

    def __init__(self, state: ReplayState) -> None:
        remaining = state.remaining()
        where = (
            ", ".join(f"partition {p} offset {s}" for p, (s, _) in sorted(remaining.items()))
            or "nothing left"
        )
        super().__init__(
            f"replay {state.plan.replay_id} interrupted; run the same command again to resume "
            f"at {where} (checkpoint {state.path})"
        )
        self.state = state


class _Interrupts:
    """SIGINT/SIGTERM during a replay: stop the stages' retries and cancel the main task."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.pipeline: InProcessPipeline | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def bind(self, pipeline: InProcessPipeline) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.pipeline = pipeline

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt  # a second signal: stop now
        self.event.set()
        log.warning(
            "replay: %s received; stopping after the write in progress", signal.Signals(signum).name
        )
        if self.pipeline is not None:
            for stage in self.pipeline.sink_stages:
                stage.stop()
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)


@dataclass
class ReplayPlan:
    replay_id: str
    source: str
    topic: str
    sinks: list[str]
    #: partition -> [start, end) offsets
    ranges: dict[int, tuple[int, int]]
    window_from: str | None = None
    window_to: str | None = None

    @property
    def total_records(self) -> int:
        return sum(end - start for start, end in self.ranges.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "source": self.source,
            "topic": self.topic,
            "sinks": self.sinks,
            "ranges": {str(p): [s, e] for p, (s, e) in sorted(self.ranges.items())},
            "from": self.window_from,
            "to": self.window_to,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ReplayPlan:
        return cls(
            replay_id=doc["replay_id"],
            source=doc["source"],
            topic=doc["topic"],
            sinks=list(doc["sinks"]),
            ranges={int(p): (int(r[0]), int(r[1])) for p, r in doc["ranges"].items()},
            window_from=doc.get("from"),
            window_to=doc.get("to"),
        )


@dataclass
class ReplayState:
    """The checkpoint file: the plan plus the next offset to deliver per partition."""

    path: Path
    plan: ReplayPlan
    positions: dict[int, int] = field(default_factory=dict)
    done: bool = False

    @classmethod
    def load(cls, path: Path) -> ReplayState | None:
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        return cls(
            path,
            ReplayPlan.from_json(doc["plan"]),
            {int(p): int(o) for p, o in doc["positions"].items()},
            bool(doc["done"]),
        )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "plan": self.plan.as_json(),
            "positions": {str(p): o for p, o in self.positions.items()},
            "done": self.done,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new checkpoint

    def remaining(self) -> dict[int, tuple[int, int]]:
        return {
            p: (self.positions.get(p, s), e)
            for p, (s, e) in self.plan.ranges.items()
            if self.positions.get(p, s) < e
        }


def replay_id_for(
    source: str, sinks: list[str], window_from: str | None, window_to: str | None, ranges: list[str]
) -> str:
    key = orjson.dumps([source, sorted(sinks), window_from, window_to, sorted(ranges)])
    return hashlib.sha256(key).hexdigest()[:12]


def state_path(settings: Settings, replay_id: str) -> Path:
    return Path(settings.data_dir) / "replay" / f"{replay_id}.json"


def parse_ranges(specs: list[str]) -> dict[int, tuple[int, int | None]]:
    """``P:START-END`` (END exclusive) or ``P:START-`` (to the end)."""
    result: dict[int, tuple[int, int | None]] = {}
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                part, span = item.split(":", 1)
                start, _, end = span.partition("-")
                result[int(part)] = (int(start), int(end) if end.strip() else None)
            except ValueError:
                raise ValueError(
                    f"cannot read range {item!r}: "
                    "use PARTITION:START-END (END exclusive) or PARTITION:START-"
                ) from None
    return result


def make_plan(
    settings: Settings,
    *,
    source: str,
    sinks: list[str],
    window_from: str | None = None,
    window_to: str | None = None,
    ranges: list[str] | None = None,
    replay_id: str | None = None,
) -> ReplayPlan:
    if source not in SOURCES:
        raise ValueError(f"--source must be one of {', '.join(SOURCES)}")
    if ranges and (window_from or window_to):
        raise ValueError("give either --from/--to or --range, not both")
    topic = settings.kafka.raw_topic if source == "raw" else settings.kafka.normalized_topic
    # The id comes from the arguments as typed, so a relative window (-3d) run again
    # after an interruption finds its checkpoint.
    replay_id = replay_id or replay_id_for(source, sinks, window_from, window_to, ranges or [])
    kc = kafka_tools.consumer(settings)
    try:
        tps = kafka_tools.partitions(kc, topic)
        ends = kafka_tools.true_end_offsets(kc, tps)
        begins = kc.beginning_offsets(tps)
        plan_ranges: dict[int, tuple[int, int]] = {}
        if ranges:
            for p, (start, end) in parse_ranges(ranges).items():
                tp = TopicPartition(topic, p)
                if tp not in ends:
                    raise ValueError(f"partition {p} does not exist in {topic}")
                lo = max(start, begins[tp])
                hi = ends[tp] if end is None else min(end, ends[tp])
                plan_ranges[p] = (lo, max(lo, hi))
        else:
            from_dt = parse_time(window_from) if window_from else None
            to_dt = parse_time(window_to) if window_to else None
            if from_dt and to_dt and to_dt <= from_dt:
                raise ValueError("--to must be after --from")
            starts = (
                kafka_tools.offsets_at_times(kc, {tp: to_ms(from_dt) for tp in tps}, ends)
                if from_dt
                else dict(begins)
            )
            stops = (
                kafka_tools.offsets_at_times(kc, {tp: to_ms(to_dt) for tp in tps}, ends)
                if to_dt
                else dict(ends)
            )
            for tp in tps:
                plan_ranges[tp.partition] = (starts[tp], max(starts[tp], stops[tp]))
            window_from = from_dt.isoformat() if from_dt else None
            window_to = to_dt.isoformat() if to_dt else None
    finally:
        kc.close()
    return ReplayPlan(
        replay_id=replay_id,
        source=source,
        topic=topic,
        sinks=list(sinks),
        ranges=plan_ranges,
        window_from=window_from,
        window_to=window_to,
    )


def read_window(
    kc: KafkaConsumer,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    max_records: int,
    stopping: threading.Event | None = None,
) -> Iterator[tuple[int, list[Any]]]:
    """Yield (partition, records) chunks covering exactly ``[start, end)`` per partition.

    Ends early (raising KeyboardInterrupt) once ``stopping`` is set.
    """
    todo = {TopicPartition(topic, p): (s, e) for p, (s, e) in ranges.items() if s < e}
    if not todo:
        return
    kc.assign(list(todo))
    for tp, (start, _) in todo.items():
        kc.seek(tp, start)
    idle_since = time.monotonic()
    while todo:
        if stopping is not None and stopping.is_set():
            raise KeyboardInterrupt
        batch = kc.poll(timeout_ms=500, max_records=max_records)
        if not any(batch.values()):
            if time.monotonic() - idle_since > 30:
                missing = ", ".join(
                    f"{tp.partition}@{kc.position(tp)}<{e}" for tp, (_, e) in todo.items()
                )
                raise RuntimeError(
                    f"{topic}: records stopped arriving before the window end ({missing})"
                )
            continue
        idle_since = time.monotonic()
        for tp, records in batch.items():
            if tp not in todo:
                continue
            end = todo[tp][1]
            inside = [r for r in records if r.offset < end]
            if inside:
                yield tp.partition, inside
            if records[-1].offset + 1 >= end:
                todo.pop(tp)
                kc.pause(tp)
    kc.unsubscribe()


@dataclass
class PartitionCount:
    records: int = 0
    events: int = 0
    rejected: int = 0


def dry_run(
    settings: Settings, plan: ReplayPlan, ranges: dict[int, tuple[int, int]] | None = None
) -> dict[str, Any]:
    """Read the window and count, per partition and per sink, what a replay would deliver."""
    return asyncio.run(_dry_run(settings.model_copy(update={"replay": True}), plan, ranges))


async def _dry_run(
    settings: Settings, plan: ReplayPlan, ranges: dict[int, tuple[int, int]] | None
) -> dict[str, Any]:
    # The same stages as a replay with the delivery skipped: the normalize
    # stage (for raw records) and each sink's gates.
    pipeline = InProcessPipeline(settings, plan.sinks, normalize=plan.source == "raw")
    normalize = pipeline.normalize_stage
    counts = {p: PartitionCount() for p in plan.ranges}
    by_event: Counter[str] = Counter()
    by_sink: Counter[str] = Counter()
    if normalize is not None:
        await asyncio.to_thread(normalize.start)
    kc = kafka_tools.consumer(settings)
    try:
        for partition, records in read_window(
            kc, plan.topic, ranges if ranges is not None else plan.ranges, 5000
        ):
            if normalize is not None:
                batch = await asyncio.to_thread(normalize.process, records)
                rejected, encoded = len(batch.dead), batch.encoded
            else:
                decoded, unreadable = split_unified(records)
                rejected, encoded = len(unreadable), [orjson.dumps(ev) for ev in decoded]
            c = counts[partition]
            c.records += len(records)
            c.events += len(encoded)
            c.rejected += rejected
            by_event.update(orjson.loads(raw)["event"] for raw in encoded)
            for stage in pipeline.sink_stages:
                by_sink[stage.sink.name] += len(stage.gate([orjson.loads(raw) for raw in encoded]))
    finally:
        kc.close()
        if normalize is not None:
            normalize.close()
        pipeline.output.close()
    return {
        **plan.as_json(),
        "dry_run": True,
        "partitions": {
            str(p): {"start": plan.ranges[p][0], "end": plan.ranges[p][1], **c.__dict__}
            for p, c in sorted(counts.items())
        },
        "records": sum(c.records for c in counts.values()),
        "events": sum(c.events for c in counts.values()),
        "rejected": sum(c.rejected for c in counts.values()),
        "by_sink": {sink: by_sink[sink] for sink in plan.sinks},
        "by_event": dict(sorted(by_event.items())),
    }


def run_replay(
    settings: Settings,
    plan: ReplayPlan,
    *,
    rate: float | None = None,
    restart: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Deliver the plan's window (or what is left of it) to its sinks; returns a summary."""
    path = state_path(settings, plan.replay_id)
    state = None if restart else ReplayState.load(path)
    resumed = state is not None and not state.done
    if not resumed:
        state = ReplayState(path, plan)
        state.save()
    assert state is not None
    interrupts = _Interrupts()
    try:
        with interrupts:
            return asyncio.run(
                _replay(
                    settings.model_copy(update={"replay": True}),
                    state,
                    rate,
                    progress,
                    resumed,
                    interrupts,
                )
            )
    except (KeyboardInterrupt, asyncio.CancelledError):
        if interrupts.event.is_set():
            raise ReplayInterrupted(state) from None
        raise


async def _replay(
    settings: Settings,
    state: ReplayState,
    rate: float | None,
    show_progress: bool,
    resumed: bool,
    interrupts: _Interrupts | None = None,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    plan = state.plan
    remaining = state.remaining()
    todo = sum(e - s for s, e in remaining.values())
    pipeline = InProcessPipeline(settings, plan.sinks, normalize=plan.source == "raw")
    if interrupts is not None:
        interrupts.bind(pipeline)
    stopping = interrupts.event if interrupts is not None else None
    max_records = 2000 if not rate else int(max(1, min(2000, rate / 5)))
    records_read = events_read = 0
    started = time.monotonic()
    progress = Progress(
        TextColumn(f"replay {plan.replay_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[eps]:>8.0f} events/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    kc = kafka_tools.consumer(settings)
    try:
        await pipeline.open()
        with progress:
            task = progress.add_task("replay", total=todo, eps=0.0)
            for partition, records in read_window(kc, plan.topic, remaining, max_records, stopping):
                if plan.source == "raw":
                    events_read += (await pipeline.raw(records)).normalized
                else:
                    events_read += await pipeline.normalized(records)
                # Only after every target sink accepted the batch (an interrupt
                # cancels before this line, so the checkpoint never runs ahead).
                state.positions[partition] = records[-1].offset + 1
                state.save()
                records_read += len(records)
                elapsed = time.monotonic() - started
                progress.update(
                    task, advance=len(records), eps=events_read / elapsed if elapsed > 0 else 0.0
                )
                if rate:
                    ahead = events_read / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            state.done = True
            state.save()
    finally:
        kc.close()
        await pipeline.close()
    elapsed = time.monotonic() - started
    return {
        **plan.as_json(),
        "dry_run": False,
        "resumed": resumed,
        "records": records_read,
        "events": events_read,
        "dead_lettered": pipeline.dead_lettered,
        "by_sink": pipeline.delivered,
        "gated": pipeline.gated,
        "seconds": round(elapsed, 3),
        "events_per_second": round(events_read / elapsed, 1) if elapsed > 0 else None,
        "state_file": str(state.path),
        "positions": {str(p): o for p, o in sorted(state.positions.items())},
    }
