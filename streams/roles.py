"""Building a worker for a role: ``build_worker(settings, role)``.

* ``normalize``: one agent on the raw topic.  A batch of chunks runs through
  the :class:`~streams.stages.NormalizeStage` off the event loop; its unified
  events go to the normalized topic and its rejections to the dead letters,
  and only then are the chunks acked.
* ``sink:<name>``: one agent on the normalized topic (through the sink's
  :class:`~streams.stages.SinkStage`) and, for a sink that stores rejected
  events, one on the dead-letter topic; acked after the sink's durable write.

A crash between processing and the ack leaves the offset uncommitted, so the
chunk is redelivered: at-least-once, with idempotent sinks making the effect
exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import faust

from etl.role import Role
from sinks.base import FlushPolicy
from sinks.registry import build_sink, capabilities
from streams import web
from streams.app import EtlApp, create_app
from streams.batching import chunk_batches, events_in, policy_for, records_in, records_of
from streams.delivery import DeliveryInterrupted
from streams.lag import LagReporter
from streams.logs import batch_context
from streams.outputs import DeadLetters, FaustOutput
from streams.retry import RetryPolicy
from streams.stages import NormalizedBatch, NormalizeStage, SinkStage

if TYPE_CHECKING:
    from sinks.settings import Settings

log = logging.getLogger("etl.roles")

#: Raw records a normalize batch gathers, and how long it waits for them.
NORMALIZE_BATCH_RECORDS = 5000
NORMALIZE_BATCH_SECONDS = 0.05
#: ... and at most this many raw bytes (raw messages may be up to a megabyte each).
NORMALIZE_BATCH_BYTES = 16 * 1024 * 1024


def consumed_topics(settings: Settings, role: Role) -> list[str]:
    """The topics a role's consumer group reads."""
    k = settings.kafka
    if role.kind == "normalize":
        return [k.raw_topic]
    if role.kind == "sink":
        stores_rejected = capabilities(settings, str(role.sink)).stores_rejected
        return [k.normalized_topic] + ([k.dlq_topic] if stores_rejected else [])
    raise ValueError("role 'all' consumes through its per-role workers")


def build_worker(settings: Settings, role: Role) -> EtlApp:
    """The Faust app for ``role``: its agents, web pages and lag timer."""
    app = create_app(settings, role)
    if role.kind == "normalize":
        _normalize_agents(app)
    else:
        _sink_agents(app, str(role.sink))
    web.install(app)
    LagReporter(app).install()
    return app


async def _until_cancelled() -> None:
    """The process is stopping: hold the unacked batch until Faust cancels the agent.

    Raising instead would count as an agent crash, and Faust would restart it.
    """
    await asyncio.Event().wait()


async def _ack_all(stream: faust.StreamT, events: list[Any]) -> None:
    for event in events:
        await stream.ack(event)


def _normalize_agents(app: EtlApp) -> None:
    settings = app.settings
    policy = RetryPolicy.from_settings(settings)
    output = FaustOutput(app, "normalize", policy)
    dead_letters = DeadLetters(output, settings)
    stage = NormalizeStage(settings)

    @app.agent(app.chunk_topic(settings.kafka.raw_topic), name="normalize")
    async def normalize(stream: faust.StreamT) -> None:
        # The flag service may wait briefly for PostHog's definitions.
        await asyncio.to_thread(stage.start)
        # One batch's output in flight while the next one is normalized: the CPU
        # work overlaps the broker's acknowledgements.  Batches are still sent,
        # and acked, strictly one after another.
        in_flight: asyncio.Future[None] | None = None

        async def send_and_ack(batch: list[Any], normalized: NormalizedBatch) -> None:
            partitions = await output.partitions(settings.kafka.normalized_topic)
            await asyncio.gather(
                output.send(stage.envelopes(normalized, partitions)),
                dead_letters(normalized.dead, stage.name),
            )
            await _ack_all(stream, batch)

        try:
            async for batch in chunk_batches(
                stream,
                FlushPolicy(
                    max_events=NORMALIZE_BATCH_RECORDS,
                    max_bytes=NORMALIZE_BATCH_BYTES,
                    max_seconds=NORMALIZE_BATCH_SECONDS,
                ),
                records_in,
                read_ahead=8,  # raw chunks are small; a batch takes several
            ):
                if not batch:
                    continue
                records = records_of(batch)
                with batch_context(stage="normalize", records=len(records)):
                    normalized = await asyncio.to_thread(stage.process, records)
                    if in_flight is not None:
                        await in_flight
                    # The task copies this context: its log lines carry this batch's id.
                    in_flight = asyncio.ensure_future(send_and_ack(batch, normalized))
            if in_flight is not None:
                await in_flight
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()  # unacked: redelivered after the restart
            stage.close()


def _sink_agents(app: EtlApp, name: str) -> None:
    settings = app.settings
    output = FaustOutput(app, f"sink:{name}", RetryPolicy.from_settings(settings))
    stage = SinkStage(settings, build_sink(settings, name), DeadLetters(output, settings))
    # The sink's flush policy: how many loads a day it makes (its vendor's quotas and cost).
    policy = policy_for(stage.sink.capabilities, settings)

    @app.agent(app.chunk_topic(settings.kafka.normalized_topic), name=f"deliver_{name}")
    async def deliver(stream: faust.StreamT) -> None:
        try:
            async for batch in chunk_batches(stream, policy, events_in):
                if not batch:
                    await stage.idle()
                    continue
                with batch_context(stage=stage.name, records=sum(records_in(e) for e in batch)):
                    try:
                        await stage.receive(records_of(batch))
                    except DeliveryInterrupted:
                        await _until_cancelled()
                await _ack_all(stream, batch)
        finally:
            stage.sink.close()

    if stage.stores_rejected:

        @app.agent(app.chunk_topic(settings.kafka.dlq_topic), name=f"rejected_{name}")
        async def store_rejected(stream: faust.StreamT) -> None:
            async for batch in chunk_batches(stream, policy, records_in):
                if not batch:
                    continue
                records = records_of(batch)
                with batch_context(stage=f"dlq:{name}", records=len(records)):
                    try:
                        await stage.store_rejected(records)
                    except DeliveryInterrupted:
                        await _until_cancelled()
                await _ack_all(stream, batch)

    @app.task
    async def open_sink() -> None:
        await stage.open()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_retries(sender: Any, **kwargs: Any) -> None:
        # A shutdown ends the sink's retries at once; the batch in hand is
        # not acked, so it is redelivered - never isolated or dead-lettered.
        stage.stop()
