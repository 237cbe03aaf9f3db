"""Load policies per destination: 24 simulated hours at steady rates, counting load jobs and
DML statements per table per day against the vendors' documented limits, and the agent's
batching (streams.batching.chunk_batches) driven by the same FlushClock on a real loop."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace

import pytest

from sinks.base import FlushPolicy
from sinks.registry import capabilities
from sinks.settings import Settings
from streams.batching import (
    DAY_SECONDS,
    FlushClock,
    chunk_batches,
    policy_for,
    project_loads,
    projected_loads,
)

#: BigQuery: table modifications (load jobs + DML writes) per table per day.
BIGQUERY_TABLE_MODIFICATIONS_PER_DAY = 1_500
#: Steady rates per worker; the defaults' ceiling is flush_max_bytes per load (32 MiB, about
#: 33k events of 1 KB) over the interval: ~370 events/s on BigQuery, ~550 on Snowflake.
RATES = (0.1, 1.0, 50.0, 300.0)


def per_table_per_day(sink: str, rate: float) -> dict[str, int]:
    """Load jobs and DML statements one worker makes per table per day at ``rate`` events/s.

    Each write loads every table it touches into that table's staging table (one load
    job, or one COPY on Snowflake) and MERGEs it into the target (one DML statement); a
    BigQuery staging table is replaced every STAGING_LOADS loads and every hour.
    """
    from sinks.bigquery import STAGING_LOADS

    settings = Settings()
    caps = capabilities(settings, sink)
    p = project_loads(policy_for(caps, settings), rate, max_write_events=caps.max_batch_events)
    staging_loads = p.writes_per_day
    if sink == "bigquery":
        per_hour = math.ceil(p.writes_per_day / 24)
        staging_loads = min(STAGING_LOADS, per_hour)
    return {
        "loads": p.loads_per_day,
        "dml_per_target_table": p.writes_per_day,
        "load_jobs_per_staging_table": staging_loads,
        "falls_behind": int(p.falls_behind),
    }


@pytest.mark.parametrize("rate", RATES)
def test_bigquery_stays_well_under_its_table_quota_all_day(rate: float) -> None:
    day = per_table_per_day("bigquery", rate)
    assert not day["falls_behind"], day
    half = BIGQUERY_TABLE_MODIFICATIONS_PER_DAY // 2
    # Well under: at most 2/3 of the quota on any target, 1/2 on any staging table.
    assert day["dml_per_target_table"] <= BIGQUERY_TABLE_MODIFICATIONS_PER_DAY * 2 // 3, day
    assert day["load_jobs_per_staging_table"] <= half, day
    if rate >= 1:
        # A steady stream is loaded about every 90 s, not every 0.5 s.
        assert day["loads"] == pytest.approx(DAY_SECONDS / 90, rel=0.02), day


@pytest.mark.parametrize("rate", RATES)
def test_snowflake_loads_about_once_a_minute_not_every_half_second(rate: float) -> None:
    day = per_table_per_day("snowflake", rate)
    assert not day["falls_behind"], day
    # Each MERGE wakes the warehouse: at most one a minute per table (1,440 a day).
    assert day["dml_per_target_table"] <= DAY_SECONDS / 60, day
    if rate >= 1:
        assert day["loads"] == pytest.approx(DAY_SECONDS / 60, rel=0.02), day


def test_duckdb_stays_low_latency() -> None:
    settings = Settings()
    policy = policy_for(capabilities(settings, "duckdb"), settings)
    assert (policy.max_seconds, policy.min_interval) == (settings.delivery.flush_interval, 0.0)
    rate = 50.0
    p = project_loads(policy, rate)
    assert p.max_wait_seconds <= settings.delivery.flush_interval + 0.05
    # A batch closes one interval after its first event; the next starts at the next event.
    every = settings.delivery.flush_interval + 1 / rate
    assert p.loads_per_day == pytest.approx(DAY_SECONDS / every, rel=0.03)


def test_what_the_old_half_second_flush_did_to_bigquery() -> None:
    """The issue's arithmetic: a load every 0.5 s exhausts 1,500 a day in about 13 minutes."""
    old = FlushPolicy(max_events=10_000, max_seconds=0.5)
    p = project_loads(old, 50.0, seconds=3600)
    minutes_to_quota = BIGQUERY_TABLE_MODIFICATIONS_PER_DAY / (p.loads_per_day / 60)
    assert 12 <= minutes_to_quota <= 13.5


def test_a_stream_faster_than_the_policy_is_reported_as_falling_behind() -> None:
    policy = FlushPolicy(max_events=1_000, max_seconds=60, min_interval=60)
    assert project_loads(policy, 100.0).falls_behind  # 6,000/min into 1,000 per load
    assert not project_loads(policy, 10.0).falls_behind


def test_status_shows_the_projection_for_every_enabled_sink() -> None:
    settings = Settings(
        sinks=["duckdb", "bigquery", "snowflake"],
        bigquery={"project": "p"},
        snowflake={"account": "a", "user": "u", "password": "x"},
    )
    rows = {r["sink"]: r for r in projected_loads(settings, {"bigquery": 200.0})}
    assert set(rows) == {"duckdb", "bigquery", "snowflake"}
    assert rows["bigquery"]["measured"] and not rows["snowflake"]["measured"]
    assert rows["bigquery"]["loads_per_day"] == pytest.approx(960, abs=10)
    assert rows["snowflake"]["loads_per_day"] == pytest.approx(1440, abs=15)
    assert rows["duckdb"]["loads_per_day"] > 100_000


# ------------------------------------------------- the agent's loop on a real event loop
class _Stream:
    """A Faust-like stream of chunk events arriving at a steady pace."""

    def __init__(self, n: int, every: float) -> None:
        self.n, self.every = n, every

    def noack(self) -> _Stream:
        return self

    async def events(self):
        for _ in range(self.n):
            await asyncio.sleep(self.every)
            yield SimpleNamespace(value=[SimpleNamespace(value=b"x" * 100, headers=())])


def test_the_agent_waits_out_the_minimum_interval_and_closes_on_bytes() -> None:
    async def run(policy: FlushPolicy, n: int, every: float) -> list[tuple[float, int]]:
        out = []
        started = time.monotonic()
        async for batch in chunk_batches(_Stream(n, every), policy, lambda e: len(e.value)):
            if batch:
                out.append((time.monotonic() - started, len(batch)))
            if sum(size for _, size in out) >= n:
                break
        return out

    # min_interval: 40 events over ~0.8 s become loads at least 0.3 s apart.
    loads = asyncio.run(
        run(FlushPolicy(max_events=5, max_seconds=0.05, min_interval=0.3), 40, 0.02)
    )
    starts = [t for t, _ in loads]
    assert all(b - a >= 0.29 for a, b in zip(starts, starts[1:], strict=False)), loads
    assert sum(size for _, size in loads) == 40
    # max_bytes: 100-byte records close a batch at 300 bytes.
    loads = asyncio.run(run(FlushPolicy(max_events=1000, max_seconds=5, max_bytes=300), 9, 0.001))
    assert [size for _, size in loads] == [3, 3, 3]
    # The projection's clock is the agent's clock.
    clock = FlushClock(FlushPolicy(max_events=5, max_seconds=1, min_interval=10))
    clock.loaded(100.0)
    assert clock.deadline(101.0) == 110.0 and clock.full(5, 0)


def test_a_batch_closes_max_seconds_after_its_first_event_arrived_even_behind_a_slow_write() -> (
    None
):
    """The flush interval bounds each event's wait, counted from its arrival at the agent.

    Events that arrive while the previous batch is being written have already waited
    when the agent turns to them; their batch still closes ``max_seconds`` after the
    first of them came, not a full interval after the write ended.
    """

    class _Stamped(_Stream):
        async def events(self):
            for _ in range(self.n):
                await asyncio.sleep(self.every)
                yield SimpleNamespace(
                    value=[SimpleNamespace(value=b"x", headers=())], at=time.monotonic()
                )

    async def run() -> list[float]:
        waits: list[float] = []
        seen = 0
        policy = FlushPolicy(max_events=10_000, max_seconds=0.3)
        async for batch in chunk_batches(_Stamped(60, 0.02), policy, lambda e: len(e.value)):
            now = time.monotonic()
            waits += [now - event.at for event in batch]
            seen += len(batch)
            if seen >= 60:
                break
            if batch:
                await asyncio.sleep(0.25)  # the write
        return waits

    waits = asyncio.run(run())
    assert len(waits) == 60
    # Before: the batch after a write waited out the write and then a whole interval (~0.55 s).
    assert max(waits) < 0.3 + 0.1, sorted(waits)[-5:]
