"""Batches of stream events for the agents, closed by the sink's flush policy.

A batch closes at a number of events or bytes, or some seconds after its first
event, and never sooner than the policy's minimum interval after the previous
load (the quota of load jobs per table per day).  :class:`FlushClock` is that
rule; the agent runs it (:func:`chunk_batches`) and :func:`project_loads`
simulates it over a day, for the quota test and ``etl status``.

Events are never acked here: the agent acks a batch after it is durable.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust

from mappers.envelope import event_count
from sinks.base import Capabilities, FlushPolicy

if TYPE_CHECKING:
    from sinks.settings import Settings

DAY_SECONDS = 86_400.0


def records_in(event: Any) -> int:
    """Kafka records in one chunk event (streams.transport)."""
    return len(event.value)


def events_in(event: Any) -> int:
    """Unified events in a chunk of the normalized topic (from the envelopes' headers)."""
    return sum(event_count(record) for record in event.value)


def bytes_in(event: Any) -> int:
    """Encoded bytes of one chunk event's records."""
    return sum(len(record.value or b"") for record in event.value)


def records_of(batch: list[Any]) -> list[Any]:
    return [record for event in batch for record in event.value]


def policy_for(caps: Capabilities, settings: Settings) -> FlushPolicy:
    """The sink's declared flush policy, else the delivery settings (low latency)."""
    if caps.flush is not None:
        return caps.flush
    return FlushPolicy(
        max_events=settings.delivery.batch_max_events,
        max_bytes=settings.delivery.batch_max_bytes,
        max_seconds=settings.delivery.flush_interval,
    )


class FlushClock:
    """The one rule for when a gathering batch closes."""

    def __init__(self, policy: FlushPolicy) -> None:
        self.policy = policy
        self.last_load = -math.inf

    def full(self, events: int, nbytes: int) -> bool:
        p = self.policy
        return events >= p.max_events or (p.max_bytes is not None and nbytes >= p.max_bytes)

    def earliest(self) -> float:
        """No load starts before this (min_interval after the previous one)."""
        return self.last_load + self.policy.min_interval

    def deadline(self, first_at: float) -> float:
        """When a batch whose first event came at ``first_at`` closes if it never fills."""
        return max(first_at + self.policy.max_seconds, self.earliest())

    def loaded(self, at: float) -> None:
        self.last_load = at


async def chunk_batches(
    stream: faust.StreamT,
    policy: FlushPolicy,
    count: Callable[[Any], int],
    size: Callable[[Any], int] = bytes_in,
    read_ahead: int = 2,
) -> AsyncIterator[list[Any]]:
    """Group chunk events into batches by ``policy``.

    ``read_ahead`` chunks wait in memory beyond the batch being gathered.
    Yields ``[]`` after ``policy.max_seconds`` without input, so sinks can release
    resources while idle.
    """
    # Each chunk with the time it arrived: a batch's interval runs from its first
    # chunk's arrival, which may be during the previous batch's write.
    queue: asyncio.Queue[tuple[float, Any]] = asyncio.Queue(maxsize=read_ahead)
    clock = FlushClock(policy)
    loop = asyncio.get_running_loop()

    async def pump() -> None:
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            await queue.put((loop.time(), event))

    pumping = asyncio.ensure_future(pump())
    try:
        while True:
            try:
                arrived, first = await asyncio.wait_for(queue.get(), timeout=policy.max_seconds)
            except TimeoutError:
                if pumping.done():
                    pumping.result()
                    return
                yield []
                continue
            batch, n = [first], count(first)
            nbytes = size(first) if policy.max_bytes is not None else 0
            deadline = clock.deadline(arrived)
            while not clock.full(n, nbytes):
                if not queue.empty():
                    event = queue.get_nowait()[1]
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event = (await asyncio.wait_for(queue.get(), timeout=remaining))[1]
                    except TimeoutError:
                        break
                batch.append(event)
                n += count(event)
                if policy.max_bytes is not None:
                    nbytes += size(event)
            # A full batch still waits out the minimum interval (backpressure, not loss).
            wait = clock.earliest() - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            clock.loaded(loop.time())
            yield batch
    finally:
        pumping.cancel()


@dataclass(frozen=True, slots=True)
class LoadProjection:
    """A steady stream's loads over a day under a flush policy."""

    events_per_second: float
    loads_per_day: int
    #: Write calls per day (a load larger than the sink's write limit is split).
    writes_per_day: int
    mean_batch_events: float
    #: Longest an event waits in a gathering batch, seconds.
    max_wait_seconds: float
    #: True when the stream is faster than the policy can load (lag grows).
    falls_behind: bool


def project_loads(
    policy: FlushPolicy,
    events_per_second: float,
    *,
    event_bytes: int = 1_000,
    max_write_events: int | None = None,
    seconds: float = DAY_SECONDS,
) -> LoadProjection:
    """Simulate :class:`FlushClock` over ``seconds`` of a stream at a constant rate."""
    if events_per_second <= 0:
        return LoadProjection(events_per_second, 0, 0, 0.0, 0.0, False)
    clock = FlushClock(policy)
    cap = policy.max_events
    if policy.max_bytes is not None:
        cap = max(1, min(cap, policy.max_bytes // max(1, event_bytes)))
    rate = events_per_second
    consumed = 0  # events taken into batches so far
    loads = writes = 0
    max_wait = 0.0
    while True:
        # The batch starts when its first event is there (backlog: at once).
        start = max(clock.last_load if loads else 0.0, consumed / rate)
        if start >= seconds:
            break
        full_at = (consumed + cap - 1) / rate  # when the cap-th event has arrived
        close = min(full_at, clock.deadline(start))
        close = max(close, clock.earliest())
        if close > seconds:
            close = seconds
        size = min(cap, max(1, math.floor(close * rate) + 1 - consumed))
        max_wait = max(max_wait, close - consumed / rate)
        consumed += size
        clock.loaded(close)
        loads += 1
        writes += math.ceil(size / max_write_events) if max_write_events else 1
    behind = consumed < math.floor(seconds * rate) - cap
    return LoadProjection(
        events_per_second,
        loads,
        writes,
        consumed / loads if loads else 0.0,
        round(max_wait, 3),
        behind,
    )


#: Rate ``etl status`` projects at when it has not measured one.
NOMINAL_EVENTS_PER_SECOND = 100.0


def projected_loads(settings: Settings, rates: dict[str, float | None]) -> list[dict[str, Any]]:
    """Per enabled sink: its flush policy and the loads a day it makes at ``rates[sink]``
    events/s (``NOMINAL_EVENTS_PER_SECOND`` when unmeasured).  A load is one staging
    load + MERGE per table it touches, so loads/day is also the modifications per table."""
    from sinks.registry import capabilities

    out = []
    for name in settings.sinks:
        caps = capabilities(settings, name)
        policy = policy_for(caps, settings)
        rate = rates.get(name) or NOMINAL_EVENTS_PER_SECOND
        p = project_loads(policy, rate, max_write_events=caps.max_batch_events)
        out.append(
            {
                "sink": name,
                "events_per_second": rate,
                "measured": bool(rates.get(name)),
                "max_events": policy.max_events,
                "max_bytes": policy.max_bytes,
                "max_seconds": policy.max_seconds,
                "min_interval": policy.min_interval,
                "loads_per_day": p.loads_per_day,
                "writes_per_day": p.writes_per_day,
                "max_wait_seconds": p.max_wait_seconds,
                "falls_behind": p.falls_behind,
            }
        )
    return out
