"""Batches of stream events for the agents: up to a size, or what arrived within a time.

Events are never acked here: the agent acks a batch after it is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust

from mappers.envelope import event_count


def records_in(event: Any) -> int:
    """Kafka records in one chunk event (streams.transport)."""
    return len(event.value)


def events_in(event: Any) -> int:
    """Unified events in a chunk of the normalized topic (from the envelopes' headers)."""
    return sum(event_count(record) for record in event.value)


def records_of(batch: list[Any]) -> list[Any]:
    return [record for event in batch for record in event.value]


async def chunk_batches(
    stream: faust.StreamT, max_events: int, within: float, count: Callable[[Any], int]
) -> AsyncIterator[list[Any]]:
    """Group chunk events into batches of up to ``max_events`` or ``within`` seconds.

    Yields ``[]`` after ``within`` seconds without input, so sinks can release
    resources while idle.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)

    async def pump() -> None:
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            await queue.put(event)

    pumping = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), timeout=within)
            except TimeoutError:
                if pumping.done():
                    pumping.result()
                    return
                yield []
                continue
            batch, n = [first], count(first)
            deadline = loop.time() + within
            while n < max_events:
                if not queue.empty():
                    event = queue.get_nowait()
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=remaining)
                    except TimeoutError:
                        break
                batch.append(event)
                n += count(event)
            yield batch
    finally:
        pumping.cancel()
