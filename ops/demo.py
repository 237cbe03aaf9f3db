"""``etl demo``: the main job on embedded defaults, start to drained, in one command.

1. start the bundled broker on a free loopback port and create the topics;
2. start the real workers (one process per role, exactly as ``etl worker``);
3. produce a realistic synthetic stream (or the lines of ``--input``);
4. wait until every consumer group has committed everything, showing progress;
5. print a summary (and, with ``--json``, one JSON object as the last line).
"""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mappers.normalize import Normalizer
from ops.harness.broker import EmbeddedBroker
from ops.harness.local_pipeline import LocalPipeline
from ops.harness.synthetic import Generator
from ops.status import metric_sum
from ops.status import read_samples as scrape
from sinks.settings import Settings, load_settings
from streams.supervisor import WorkerProcess


@dataclass
class DemoResult:
    produced: int = 0
    messages: int = 0
    expected_valid: int | None = None
    expected_rejected: int | None = None
    normalized: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    by_event: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    warehouse: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "messages": self.messages,
            "normalized": self.normalized,
            "rejected": self.rejected,
            "reconciled": self.produced == self.normalized + self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "by_event": dict(sorted(self.by_event.items())),
            "events_per_second": round(self.produced / self.seconds, 1) if self.seconds else None,
            "seconds": round(self.seconds, 2),
            "warehouse": self.warehouse,
            "sinks": self.sinks,
        }


def count_events(value: bytes, normalizer: Normalizer | None = None) -> int:
    """How many events a raw message holds: the mapper's own count of its outcomes."""
    return (normalizer or Normalizer()).outcomes(value)


def input_lines(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        yield line[:-1] if line.endswith(b"\r") else line


class Progress:
    """A live view when attached to a terminal, plain lines otherwise (to stderr)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._live: Any = None
        if self.tty and not quiet:
            from rich.live import Live

            self._live = Live(refresh_per_second=4, transient=True)
            self._live.start()

    def update(
        self, produced: int, total: int | None, groups: dict[str, tuple[int, int]], started: float
    ) -> None:
        if self.quiet:
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        if self._live is not None:
            from rich.table import Table

            table = Table(title=f"etl demo - {elapsed:5.1f}s", show_edge=False)
            table.add_column("stage")
            table.add_column("done", justify="right")
            table.add_column("of", justify="right")
            table.add_column("lag", justify="right")
            table.add_row("produce raw", f"{produced:,}", f"{total:,}" if total else "?", "")
            for group, (done, end) in groups.items():
                table.add_row(group, f"{done:,}", f"{end:,}", f"{max(end - done, 0):,}")
            self._live.update(table)
        elif time.monotonic() - self._last > 2.0:
            self._last = time.monotonic()
            parts = ", ".join(f"{g} {d:,}/{e:,}" for g, (d, e) in groups.items())
            print(f"[{elapsed:6.1f}s] produced {produced:,}; {parts}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def run_demo(
    base: Settings | None = None,
    *,
    events: int = 20_000,
    input_path: Path | None = None,
    warehouse: Path = Path("warehouse.duckdb"),
    partitions: int = 4,
    seed: int = 7,
    timeout: float | None = None,
    work_dir: Path | None = None,
) -> DemoResult:
    base = base or load_settings()
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="etl-demo-"))
    warehouse = warehouse.resolve()
    result = DemoResult()
    broker = EmbeddedBroker(log_path=work_dir / "broker.log").start()
    pipeline: LocalPipeline | None = None
    progress = Progress(quiet=False)
    try:
        settings = base.model_copy(
            update={
                "kafka": base.kafka.model_copy(
                    update={"bootstrap_servers": broker.bootstrap, "partitions": partitions}
                ),
                "duckdb": base.duckdb.model_copy(update={"path": warehouse}),
            }
        )
        pipeline = LocalPipeline.create(settings, work_dir)
        pipeline.start()
        _wait_ready(pipeline.workers, timeout=60)
        # The clock starts once the workers have joined their groups, so
        # events_per_second measures the pipeline, not process start-up.
        started = time.monotonic()
        pipeline.produce(_values(events, input_path, seed, result, Normalizer(settings.normalize)))
        limit = timeout if timeout is not None else 300 + result.produced / 500
        pipeline.wait_drained(
            limit,
            on_progress=lambda st: progress.update(
                result.produced, result.produced, st.groups, started
            ),
        )
        result.seconds = time.monotonic() - started
        _collect(settings, pipeline.workers, warehouse, result)
    finally:
        progress.close()
        if pipeline is not None:
            pipeline.stop()
        broker.stop()
    return result


def _wait_ready(workers: list[WorkerProcess], timeout: float) -> None:
    """Wait until every worker has joined its group
    (/readyz; bounded - the drain check decides anyway).
    """
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending and time.monotonic() < deadline:
        for w in list(pending):
            if not w.alive():
                return  # the drain check reports the dead worker with its log
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{w.web_port}/readyz", timeout=1
                ) as resp:
                    if orjson.loads(resp.read()).get("ready"):
                        pending.remove(w)
            except (OSError, ValueError):
                pass  # not listening yet, or 503 while joining
        time.sleep(0.2)


def _values(
    events: int, input_path: Path | None, seed: int, result: DemoResult, counter: Normalizer
) -> Iterator[bytes]:
    """The raw messages to produce, counting messages and events (as the mapper will) as they go."""
    if input_path is not None:
        for line in input_lines(input_path):
            result.messages += 1
            result.produced += count_events(line, counter)
            yield line
        return
    result.expected_valid = result.expected_rejected = 0
    for msg in Generator(seed=seed).messages(events):
        result.messages += 1
        result.produced += count_events(msg.value, counter)
        result.expected_valid += msg.valid
        result.expected_rejected += msg.rejected
        yield msg.value


def _collect(
    settings: Settings, workers: list[WorkerProcess], warehouse: Path, result: DemoResult
) -> None:
    normalize = next(w for w in workers if w.role.kind == "normalize")
    samples = scrape(normalize.metrics_url)
    result.normalized = int(
        metric_sum(samples, "etl_events_out_total", stage="normalize", outcome="normalized")
    )
    result.rejected = int(
        metric_sum(samples, "etl_events_out_total", stage="normalize", outcome="rejected")
    )
    reasons: dict[str, int] = {}
    for (name, labels), value in samples.items():
        lab = dict(labels)
        if name == "etl_dlq_total" and lab.get("stage") == "normalize" and value:
            reasons[lab["reason"]] = reasons.get(lab["reason"], 0) + int(value)
    result.rejected_by_reason = reasons
    for w in workers:
        if w.role.is_sink:
            s = scrape(w.metrics_url)
            stage = str(w.role)
            result.sinks[str(w.role.sink)] = {
                "delivered": int(
                    metric_sum(s, "etl_events_out_total", stage=stage, outcome="delivered")
                ),
                "dead_lettered": int(
                    metric_sum(s, "etl_events_out_total", stage=stage, outcome="dead_lettered")
                ),
                "retries": int(metric_sum(s, "etl_sink_retries_total")),
            }
    if "duckdb" in settings.sinks:
        from sinks.duckdb import wait_for_lock

        con = wait_for_lock(warehouse, timeout=60)
        try:
            result.by_event = dict(
                con.execute("SELECT event, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall()
            )
            tables = [
                r[0]
                for r in con.execute(
                    # The analysts' tables, not the sink's bookkeeping (_etl_*).
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_type = 'BASE TABLE' AND NOT starts_with(table_name, '_etl_') "
                    "ORDER BY 1"
                ).fetchall()
            ]
            counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        finally:
            con.close()
        result.warehouse = {
            "path": str(warehouse),
            "events": counts.get("events", 0),
            "rejected_events": counts.get("rejected_events", 0),
            "tables": counts,
        }
    else:
        result.by_event = {
            dict(labels)["event"]: int(v)
            for (name, labels), v in samples.items()
            if name == "etl_normalized_by_event_total" and v
        }


def print_summary(result: DemoResult, *, to_stderr: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=to_stderr)
    data = result.as_json()
    table = Table(title="etl demo summary", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("events produced", f"{result.produced:,} in {result.messages:,} messages")
    table.add_row("normalized", f"{result.normalized:,}")
    table.add_row("rejected (dead letters)", f"{result.rejected:,}")
    table.add_row("reconciled", "yes" if data["reconciled"] else "NO")
    table.add_row(
        "throughput", f"{data['events_per_second']:,} events/s over {result.seconds:.1f}s"
    )
    if result.warehouse:
        table.add_row("warehouse", result.warehouse["path"])
        for name, n in result.warehouse["tables"].items():
            table.add_row(f"  {name}", f"{n:,}")
    for sink, stats in result.sinks.items():
        table.add_row(
            f"sink {sink}",
            f"{stats['delivered']:,} delivered, {stats['dead_lettered']} dead-lettered, "
            f"{stats['retries']} retries",
        )
    console.print(table)
    if result.rejected_by_reason:
        reasons = Table(title="rejected by reason")
        reasons.add_column("reason")
        reasons.add_column("count", justify="right")
        for reason, n in sorted(result.rejected_by_reason.items(), key=lambda kv: -kv[1]):
            reasons.add_row(reason, f"{n:,}")
        console.print(reasons)
    by_event = Table(title="events by name")
    by_event.add_column("event")
    by_event.add_column("rows", justify="right")
    for name, n in sorted(result.by_event.items(), key=lambda kv: -kv[1]):
        by_event.add_row(name, f"{n:,}")
    console.print(by_event)
