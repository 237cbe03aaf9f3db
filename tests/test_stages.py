"""The stages run in process, without Faust: what every path
(worker, replay, requeue, validate) runs.

The sink is the real DuckDB warehouse on a real file; the only stand-in is
the Kafka output, a memory of the messages the stages would produce.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest

from mappers.envelope import EVENTS_HEADER, split_unified
from ops.inprocess import Record
from sinks.base import Capabilities, Sink, WriteResult
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.settings import Settings
from streams.outputs import DeadLetters, MemoryOutput
from streams.stages import NormalizeStage, SinkStage, partition_for
from tests.conftest import warehouse_rows
from tests.test_redaction import CORPUS, SECRETS


def raw(i: int, **fields: object) -> Record:
    return Record("raw", 0, i, 1_790_000_000_000 + i, orjson.dumps(fields))


@pytest.fixture
def no_faust_app(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    built: list[object] = []
    original = faust.App.__init__

    def spy(self: faust.App, *args: object, **kwargs: object) -> None:
        built.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(faust.App, "__init__", spy)
    return built


def test_normalize_then_sink_stage_in_process(tmp_path: Path, no_faust_app: list[object]) -> None:
    settings = Settings(duckdb=DuckDBSettings(path=tmp_path / "wh.duckdb"), sinks=["duckdb"])
    records = [
        raw(
            0,
            event="tool_used",
            distinct_id="u1",
            uuid="00000000-0000-4000-8000-000000000001",
            timestamp="2026-11-20T10:00:00Z",
            properties={"latency_ms": "12", "tool_type": "sql"},
        ),
        raw(
            1,
            event="prompt_blocked",
            distinct_id="u2",
            uuid="00000000-0000-4000-8000-000000000002",
            timestamp="2026-11-20T10:00:01Z",
            properties={"match_score": 0.5, "prompt_preview": CORPUS[0]},
        ),
        raw(2, event="tool_used", distinct_id="u3", properties={"latency_ms": "fast"}),
        Record("raw", 0, 3, None, b"{not json"),
    ]
    stage = NormalizeStage(settings).start()
    try:
        batch = stage.process(records)
    finally:
        stage.close()
    assert batch.records == 4 and batch.normalized == 2
    assert [(r.reason, r.field) for r, *_ in batch.dead] == [
        ("invalid_property", "properties.latency_ms"),
        ("invalid_json", None),
    ]
    # Envelopes per partition of the distinct_id, with the event count in a header.
    out = MemoryOutput(partitions=3)
    envelopes = stage.envelopes(batch, 3)
    assert sorted(m[3] for m in envelopes) == sorted(
        {partition_for("u1", 3), partition_for("u2", 3)}
    )
    assert sum(int(dict(m[4])[EVENTS_HEADER]) for m in envelopes) == 2  # type: ignore[arg-type]

    async def deliver() -> None:
        sink_stage = SinkStage(settings, DuckDBSink(settings), DeadLetters(out, settings))
        await sink_stage.open()
        await sink_stage.deliver(batch.events())
        await sink_stage.close()

    asyncio.run(deliver())
    rows = warehouse_rows(
        settings.duckdb.path, "SELECT message_id, event FROM events ORDER BY message_id"
    )
    assert rows == [
        ("00000000-0000-4000-8000-000000000001", "tool_used"),
        ("00000000-0000-4000-8000-000000000002", "prompt_blocked"),
    ]
    assert warehouse_rows(settings.duckdb.path, "SELECT latency_ms, tool_type FROM tool_used") == [
        (12.0, "sql")
    ]
    (preview,) = warehouse_rows(settings.duckdb.path, "SELECT prompt_preview FROM prompt_blocked")[
        0
    ]
    assert not any(secret in preview for secret in SECRETS)
    # The events a sink stage receives are exactly what the normalized topic carries.
    decoded, unreadable = split_unified([Record("n", m[3] or 0, 0, None, m[2]) for m in envelopes])
    assert unreadable == [] and sorted(decoded, key=lambda e: e["message_id"]) == batch.events()
    assert no_faust_app == []


def test_sink_stage_dead_letters_a_foreign_record_and_gates_third_parties(tmp_path: Path) -> None:
    settings = Settings(
        duckdb=DuckDBSettings(path=tmp_path / "wh.duckdb"),
        flags={"gates": {"duckdb": {"prompt_blocked": "enable_guardrails_tracing"}}},
    )
    normalized = NormalizeStage(settings).process(
        [
            raw(
                0,
                event="prompt_blocked",
                distinct_id="u",
                uuid="00000000-0000-4000-8000-0000000000aa",
                properties={"match_score": 0.1},
            )
        ]
    )
    event = normalized.events()[0]
    event["context"]["flags"]["enable_guardrails_tracing"]["enabled"] = False
    out = MemoryOutput()

    async def run() -> SinkStage:
        stage = SinkStage(settings, DuckDBSink(settings), DeadLetters(out, settings))
        await stage.open()
        await stage.receive(
            [
                Record("normalized", 0, 5, None, b"not ours"),
                Record("normalized", 0, 6, None, orjson.dumps(event)),
            ]
        )
        await stage.close()
        return stage

    stage = asyncio.run(run())
    assert (stage.forwarded, stage.gated) == (0, 1)
    assert warehouse_rows(settings.duckdb.path, "SELECT count(*) FROM events") == [(0,)]
    (letter,) = [orjson.loads(m[2]) for m in out.messages]
    assert (letter["reason"], letter["stage"], letter["source_offset"]) == (
        "unreadable_record",
        "sink:duckdb",
        5,
    )


def test_the_sink_stage_gates_and_redacts_off_the_event_loop(tmp_path: Path) -> None:
    """Gates and third-party redaction cost CPU per event (mask_text on prompt text):
    like the decode, they run in a worker thread, so a large batch does not hold up
    the loop's heartbeats and web pages."""
    import threading

    settings = Settings(duckdb=DuckDBSettings(path=tmp_path / "wh.duckdb"))
    normalized = NormalizeStage(settings).process(
        [raw(i, event="tool_used", distinct_id=f"u{i}", properties={}) for i in range(3)]
    )
    threads: list[threading.Thread] = []

    async def run() -> threading.Thread:
        stage = SinkStage(settings, DuckDBSink(settings), DeadLetters(MemoryOutput(), settings))
        prepare = stage.governance.prepare

        def recording_prepare(events):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread())
            return prepare(events)

        stage.governance.prepare = recording_prepare  # type: ignore[method-assign]
        await stage.open()
        await stage.deliver(normalized.events())
        await stage.close()
        return threading.current_thread()

    loop_thread = asyncio.run(run())
    assert threads and all(t is not loop_thread for t in threads), threads
    assert warehouse_rows(settings.duckdb.path, "SELECT count(*) FROM events") == [(3,)]


class _TimedSink(Sink):
    """A destination whose connect and idle release take a while, and that records
    when each of its calls ran (stage.close must not overlap them)."""

    name = "timed"

    def __init__(self, settings: Settings, seconds: float) -> None:
        super().__init__(settings)
        self.seconds = seconds
        self.calls: list[tuple[str, float, float]] = []

    @classmethod
    def declare_capabilities(cls, settings: Settings) -> Capabilities:
        return Capabilities()

    def _timed(self, what: str, seconds: float) -> None:
        began = time.monotonic()
        time.sleep(seconds)
        self.calls.append((what, began, time.monotonic()))

    def open(self) -> None:
        self._timed("open", self.seconds)

    def on_idle(self) -> None:
        self._timed("on_idle", self.seconds)

    def close(self) -> None:
        self._timed("close", 0)

    def write(self, events: list[dict[str, Any]]) -> WriteResult:
        return WriteResult(written=len(events))


@pytest.mark.parametrize("step", ["open", "idle"])
def test_a_cancelled_open_or_idle_finishes_before_the_stage_closes_the_sink(
    tmp_path: Path, step: str
) -> None:
    # A worker that stops cancels whatever the sink stage is doing, then closes it.
    # The sink call of a cancelled open or idle goes on in its thread; a close
    # alongside it would, say, drop a connection that open then sets up and leaks.
    settings = Settings(sinks=["duckdb"], duckdb=DuckDBSettings(path=tmp_path / "wh.duckdb"))
    sink = _TimedSink(settings, seconds=0.4)
    stage = SinkStage(settings, sink, DeadLetters(MemoryOutput(), settings))

    async def run() -> None:
        task = asyncio.ensure_future(stage.open() if step == "open" else stage.idle())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stage.close()

    asyncio.run(run())
    (first, _, first_end), (last, close_began, _) = sink.calls[0], sink.calls[-1]
    assert (first, last) == ("open" if step == "open" else "on_idle", "close"), sink.calls
    assert close_began >= first_end, f"close ran {first_end - close_began:.2f} s into {first}"
