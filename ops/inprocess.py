"""The pipeline's stages in this process, for the tooling: replay, requeue, validate.

The same :class:`~streams.stages.NormalizeStage` and
:class:`~streams.stages.SinkStage` objects the workers run; only the
transport differs.  Records come from a kafka-python consumer (or a file),
events are delivered to the target sinks directly, and dead letters are
produced to the dead-letter topic with kafka-python.  What a replay or a
requeue writes is therefore exactly what the live worker writes for the same
input: the same ids, flag decisions, gates, redaction and rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sinks.registry import build_sink
from sinks.settings import Settings
from streams.outputs import DeadLetters, ProducerOutput
from streams.stages import NormalizedBatch, NormalizeStage, SinkStage


class InProcessPipeline:
    """Normalize (for raw records) and one sink stage per target sink, in this process."""

    def __init__(self, settings: Settings, sinks: Sequence[str], *, normalize: bool = True) -> None:
        self.settings = settings
        self.output = ProducerOutput(settings, "tooling")
        self.dead_letters = DeadLetters(self.output, settings)
        self.normalize_stage = NormalizeStage(settings) if normalize else None
        self.sink_stages = [
            SinkStage(settings, build_sink(settings, name), self.dead_letters) for name in sinks
        ]

    def stage_for(self, sink: str) -> SinkStage:
        return next(stage for stage in self.sink_stages if stage.sink.name == sink)

    async def open(self) -> None:
        if self.normalize_stage is not None:
            await asyncio.to_thread(self.normalize_stage.start)
        for stage in self.sink_stages:
            await stage.open()

    async def close(self) -> None:
        for stage in self.sink_stages:
            await stage.close()
        if self.normalize_stage is not None:
            self.normalize_stage.close()
        self.output.close()

    async def __aenter__(self) -> InProcessPipeline:
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------ raw input
    async def normalize(self, records: Sequence[Any]) -> NormalizedBatch:
        """Raw records through the normalize stage; its dead letters are sent,
        its events returned.
        """
        if self.normalize_stage is None:
            raise RuntimeError("this pipeline has no normalize stage")
        batch = await asyncio.to_thread(self.normalize_stage.process, records)
        await self.dead_letters(batch.dead, self.normalize_stage.name)
        return batch

    async def raw(self, records: Sequence[Any]) -> NormalizedBatch:
        """Raw records -> normalize -> every target sink."""
        batch = await self.normalize(records)
        for stage in self.sink_stages:
            # Each sink decodes its own copy, as each sink worker does: a
            # third party's redaction must not reach the warehouse's events.
            await stage.deliver(batch.events())
        return batch

    # ----------------------------------------------------- normalized input
    async def normalized(self, records: Sequence[Any]) -> int:
        """Normalized-topic records -> every target sink; returns the events read."""
        read = 0
        for stage in self.sink_stages:
            read = await stage.receive(records)
        return read

    @property
    def dead_lettered(self) -> int:
        return self.dead_letters.sent

    @property
    def delivered(self) -> dict[str, int]:
        """Events handed to each sink after its flag gates."""
        return {stage.sink.name: stage.forwarded for stage in self.sink_stages}

    @property
    def gated(self) -> dict[str, int]:
        return {stage.sink.name: stage.gated for stage in self.sink_stages}


@dataclass(frozen=True, slots=True)
class Record:
    """A record read from somewhere other than a Kafka consumer (a dead letter, a file line)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    #: For a dead letter whose payload was redacted: the original values' keyed hashes.
    redaction_hashes: dict[str, str] | None = None


def normalize_values(
    values: Sequence[bytes],
    settings: Settings | None = None,
    *,
    topic: str = "local",
    timestamp_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Raw message values -> unified events exactly as a sink stage receives them
    (the normalize stage).
    """
    stage = NormalizeStage(settings or Settings()).start()
    try:
        records = [
            Record(topic, 0, offset, timestamp_ms, value) for offset, value in enumerate(values)
        ]
        return stage.process(records).events()
    finally:
        stage.close()
