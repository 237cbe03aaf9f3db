"""Where stages send what they produce: Kafka topics, durably.

A stage never talks to a Kafka client itself; it gets an :class:`Output`.
The worker's output is Faust's producer (:class:`FaustOutput`); the tooling
(replay, requeue) uses a kafka-python producer (:class:`ProducerOutput`).
Either returns from :meth:`send` only once the broker acknowledged every
message, retrying until it does.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from etl import kafka_tools
from mappers.deadletter import dead_letter, dumps_dead_letter
from mappers.errors import Rejection
from streams import metrics
from streams.retry import RetryPolicy, until_done

if TYPE_CHECKING:
    import faust

    from etl.config import CoreSettings

#: (topic, key, value, partition, headers)
OutMessage = tuple[str, bytes | None, bytes, int | None, list[tuple[str, bytes]] | None]
#: A rejection and the source coordinates of what was rejected.
DeadLetterItem = tuple[Rejection, str, int, int]


class Output(Protocol):
    async def send(self, messages: list[OutMessage]) -> None: ...

    async def partitions(self, topic: str) -> int: ...


class FaustOutput:
    """Produces through the worker's Faust producer."""

    def __init__(self, app: faust.App, stage: str, policy: RetryPolicy) -> None:
        self.app = app
        self.stage = stage
        self.policy = policy
        self._partitions: dict[str, tuple[float, int]] = {}

    async def partitions(self, topic: str) -> int:
        cached = self._partitions.get(topic)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        count = len(await producer.partitions_for(topic))
        self._partitions[topic] = (time.monotonic(), count)
        return count

    async def send(self, messages: list[OutMessage]) -> None:
        if not messages:
            return

        async def produce_all() -> None:
            send = self.app.producer.send
            futures = [await send(m[0], m[1], m[2], m[3], None, m[4]) for m in messages]
            await asyncio.gather(*futures)

        await until_done(
            produce_all,
            what=f"{self.stage}: producing {len(messages)} messages",
            policy=self.policy,
            on_retry=lambda exc, delay: metrics.PRODUCE_RETRIES.labels(self.stage).inc(),
        )


class ProducerOutput:
    """Produces through a kafka-python producer, off the event loop (tooling)."""

    def __init__(self, settings: CoreSettings, stage: str) -> None:
        self.settings = settings
        self.stage = stage
        self.policy = RetryPolicy.from_settings(settings)
        self.producer = kafka_tools.producer(settings)
        self._partitions: dict[str, int] = {}

    async def partitions(self, topic: str) -> int:
        if topic not in self._partitions:
            parts = await asyncio.to_thread(self.producer.partitions_for, topic)
            self._partitions[topic] = len(parts)
        return self._partitions[topic]

    async def send(self, messages: list[OutMessage]) -> None:
        if messages:
            await until_done(
                lambda: asyncio.to_thread(self._send, messages),
                what=f"{self.stage}: producing {len(messages)} messages",
                policy=self.policy,
            )

    def _send(self, messages: list[OutMessage]) -> None:
        futures = [
            self.producer.send(topic, key=key, value=value, partition=partition, headers=headers)
            for topic, key, value, partition, headers in messages
        ]
        self.producer.flush()
        for future in futures:
            future.get(timeout=60)  # raises if the broker refused

    def close(self) -> None:
        self.producer.close()


class DeadLetters:
    """Sends rejections to the dead-letter topic (original bytes, reason, source coordinates)."""

    def __init__(self, output: Output, settings: CoreSettings) -> None:
        self.output = output
        self.topic = settings.kafka.dlq_topic
        self.raw_limit = settings.normalize.dlq_raw_max_bytes
        self.sent = 0

    async def __call__(self, items: list[DeadLetterItem], stage: str) -> None:
        if not items:
            return
        messages: list[OutMessage] = []
        for rejection, topic, partition, offset in items:
            record = dead_letter(
                rejection,
                stage=stage,
                topic=topic,
                partition=partition,
                offset=offset,
                raw_limit=self.raw_limit,
            )
            messages.append(
                (self.topic, record["rejection_id"].encode(), dumps_dead_letter(record), None, None)
            )
        await self.output.send(messages)
        for rejection, *_ in items:
            metrics.DLQ.labels(stage, rejection.reason).inc()
        self.sent += len(items)


def record_headers(record: Any) -> dict[str, bytes]:
    return {name: value for name, value in (getattr(record, "headers", None) or ())}


class MemoryOutput:
    """Keeps what a stage sends, for runs that have no topic to send to (benchmarks, tests)."""

    def __init__(self, partitions: int = 1) -> None:
        self.messages: list[OutMessage] = []
        self._partitions = partitions

    async def send(self, messages: list[OutMessage]) -> None:
        self.messages.extend(messages)

    async def partitions(self, topic: str) -> int:
        return self._partitions
