"""The chunking consumer (streams.transport) on the real broker, in this process.

A rebalance holds the consumer's flow while it seeks every partition back to
its committed offset.  A fetch can land in that window, after the seek has
already run: the consumer must not hand those records over (the streams skip
them), and it must not lose them either - aiokafka's position has moved past
them, so unless the consumer puts it back they are never fetched again and the
partition's commit stalls at the first of them.  These tests hold the flow at
exactly that moment and require every record to arrive and be committed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from etl import kafka_tools
from etl.role import Role
from ops.harness.broker import EmbeddedBroker
from streams.app import create_app
from tests.conftest import isolated_settings

RECORDS = 400


def _produce(bootstrap: str, topic: str, first: int, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(first, first + count):
        producer.send(topic, b'{"n": %d}' % i, partition=0)
    producer.flush()
    producer.close()


def _hold_flow_when_a_fetch_lands(consumer: Any, hold_seconds: float) -> list[int]:
    """Wrap the consumer's fetch: the next non-empty one returns with the flow held.

    Returns the list of offsets whose fetch was held, so the test can tell the
    fault really happened.
    """
    fetch = consumer._wait_next_records
    held: list[int] = []
    armed = [True]

    async def fetch_then_hold(timeout: float) -> Any:
        records, active = await fetch(timeout)
        if armed[0] and records:
            armed[0] = False
            held.extend(r.offset for batch in records.values() for r in batch)
            consumer.stop_flow()
            asyncio.get_running_loop().call_later(hold_seconds, consumer.resume_flow)
        return records, active

    consumer._wait_next_records = fetch_then_hold
    consumer.arm = lambda: armed.__setitem__(0, True)
    return held


async def _until(condition: Any, timeout: float, what: Any) -> None:
    """Wait for ``condition()``; on timeout fail with ``what()`` (said as things stand then)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        await asyncio.sleep(0.1)


def test_records_fetched_while_the_flow_is_held_are_fetched_again(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker, tmp_path, partitions=1, web_enabled=False)
    kafka_tools.ensure_topics(settings)
    topic = settings.kafka.raw_topic
    _produce(broker.bootstrap, topic, 0, RECORDS)
    delivered: list[int] = []

    async def run() -> None:
        app = create_app(settings, Role.parse("normalize"))

        @app.agent(app.chunk_topic(topic), name="collect")
        async def collect(stream: Any) -> None:
            async for event in stream.events():
                delivered.extend(record.offset for record in event.value)
                await stream.ack(event)

        held = _hold_flow_when_a_fetch_lands(app.consumer, 0.5)
        await app.start()
        try:
            # Nothing committed yet: the held records come back from the log's start.
            await _until(
                lambda: set(delivered) >= set(range(RECORDS)),
                30,
                lambda: (
                    f"records fetched in the held window never came back: held {len(held)} "
                    f"from {held[:1]}, delivered {len(set(delivered))} of {RECORDS}"
                ),
            )
            assert held, "the fault did not happen: no fetch landed while the flow was held"
            await _until(
                lambda: _committed(settings) == RECORDS,
                30,
                lambda: f"the commit stalled at {_committed(settings)} (end {RECORDS})",
            )

            # Something committed: the next held fetch comes back from the committed offset.
            held.clear()
            app.consumer.arm()
            _produce(broker.bootstrap, topic, RECORDS, RECORDS)
            await _until(
                lambda: set(delivered) >= set(range(2 * RECORDS)),
                30,
                lambda: (
                    f"records fetched in the held window never came back: held {len(held)} "
                    f"from {held[:1]}, delivered {len(set(delivered))} of {2 * RECORDS}"
                ),
            )
            assert held and min(held) >= RECORDS
            await _until(
                lambda: _committed(settings) == 2 * RECORDS,
                30,
                lambda: f"the commit stalled at {_committed(settings)} (end {2 * RECORDS})",
            )
        finally:
            await app.stop()

    asyncio.run(run())


def _committed(settings: Any) -> int | None:
    offsets = kafka_tools.committed_offsets(settings, settings.normalize_group)
    return next(iter(offsets.values()), None)
