"""A lean Faust transport: one stream event per fetched chunk of a partition.

Stock Faust turns every Kafka record into its own trip through the consumer
drain loop, the conductor and the stream (several event-loop turns each), which
caps an agent near 9k records/s.  Our agents work in batches anyway, so this
consumer hands Faust one :class:`ChunkMessage` per (partition, fetch): its
``value`` is the list of aiokafka records, its ``offset`` the last record's.

Everything else stays Faust's: the consumer-group membership and rebalancing,
the ack/commit bookkeeping, the producer, the worker and the web server.

Commit safety (the at-least-once contract):

* acking a chunk marks *every* offset it covers (from the first offset after
  the previous chunk, so compaction gaps are covered too) as processed; a
  fetch that starts past that offset is read again from it first, since a
  fetch from before a rebalance's seek can land after it (those offsets
  would be committed unread);
* ``_new_offset`` refuses to commit past an unacked head.  Upstream compares
  ``min(acked) - committed > 1`` and skips the test when ``committed == 0``,
  which can commit past one in-flight message (faust-streaming#606); here a
  commit happens only when the acked run starts exactly at the committed
  offset (or nothing was committed yet).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

from faust import Schema
from faust.transport.consumer import Consumer as _BaseConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage, ack_lock
from faust.utils.functional import consecutive_numbers
from mode import Service
from mode.utils.futures import notify


class ChunkMessage(ConsumerMessage):
    """A stream event standing for the records ``first_offset..offset`` of one partition."""

    __slots__ = ("first_offset",)

    def __init__(self, *args: Any, first_offset: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_offset = first_offset


class ChunkSchema(Schema):
    """Hands the chunk's records to the agent untouched (no per-record decode)."""

    def loads_key(
        self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None
    ) -> Any:
        return None

    def loads_value(
        self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None
    ) -> Any:
        return message.value


class ChunkingConsumer(faust_aiokafka.Consumer):
    """aiokafka-backed Faust consumer that delivers per-partition chunks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per partition, the read offset a fetch starting past it was re-read from.
        self._gap_checked: dict[TP, int] = {}

    def _new_consumer_thread(self) -> Any:
        return ChunkingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Any) -> bool:
        if not isinstance(message, ChunkMessage):
            return super().ack(message)
        # As Faust's own ack: one step under ack_lock (the bookkeeping is shared by
        # every message), and a wake-up for a rebalance or stop waiting on acks.
        with ack_lock:
            try:
                return self._ack_chunk(message)
            finally:
                notify(self._waiting_for_ack)

    def _ack_chunk(self, message: ChunkMessage) -> bool:
        if message.acked:
            return False
        message.acked = True
        tp = message.tp
        if not self.app.topics.acks_enabled_for(message.topic):
            return False
        committed = self._committed_offset[tp]
        start = message.first_offset if committed is None else max(message.first_offset, committed)
        index = self._acked_index[tp]
        fresh = [o for o in range(start, message.offset + 1) if o not in index]
        if not fresh:
            return False
        self._unacked_messages.discard(message)
        index.update(fresh)
        self._acked[tp].extend(fresh)
        self._n_acked += len(fresh)
        return True

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        committed = self._committed_offset[tp]
        if committed is not None and acked[0] != committed:
            # Something at the committed offset is still in flight.
            if acked[0] < committed:
                stale = [o for o in acked if o < committed]
                del acked[: len(stale)]
                self._acked_index[tp].difference_update(stale)
                return self._new_offset(tp)
            return None
        run = next(consecutive_numbers(acked))
        del acked[: len(run)]
        self._acked_index[tp].difference_update(run)
        return run[-1] + 1

    async def _drain_messages(
        self, fetcher: Any
    ) -> None:  # pragma: no cover - exercised end to end
        callback = self.callback
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        read_offset = self._read_offset
        to_chunk = self._to_chunk
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, _active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                generation = self.app.consumer_generation_id
                fetched = list(records.items())
                for index, (tp, batch) in enumerate(fetched):
                    if self._rebalancing(generation):
                        # A rebalance began: these are not handed over.
                        await self._rewind(tp for tp, _ in fetched[index:])
                        break
                    start = read_offset.get(tp)
                    if start is not None:
                        batch = [r for r in batch if r.offset >= start]
                    if not batch:
                        continue
                    if start is not None and batch[0].offset > start:
                        if self._gap_checked.get(tp) != start:
                            # The fetch starts past the next offset to read: a fetch from
                            # before a rebalance's seek can land after it.  The chunk would
                            # claim the offsets in between (its ack covers them) unread.
                            # Read from there once more; a gap still there is real
                            # (transaction markers, compaction) and is covered as before.
                            self._gap_checked[tp] = start
                            await self._rewind([tp])
                            continue
                    message = to_chunk(tp, batch, batch[0].offset if start is None else start)
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                    if self._rebalancing(generation):
                        # A rebalance began while the chunk was handed over: the
                        # streams skip it.  Leave the read offset alone (a kept
                        # partition must not skip its refetched records).
                        await self._rewind(tp for tp, _ in fetched[index:])
                        break
                    # _read_offset holds the next offset to read, as after a seek.
                    read_offset[tp] = batch[-1].offset + 1
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _rebalancing(self, generation: int) -> bool:
        """A rebalance began since ``generation`` was read (or holds the flow now)."""
        return not self.flow_active or self.app.consumer_generation_id != generation

    async def _rewind(self, partitions: Iterable[TP]) -> None:
        """Seek fetched-but-not-handed-over partitions back to their next offset to read.

        The fetch moved aiokafka's position past these records.  A rebalance
        seeks every partition to its committed offset, but a fetch can land
        after that seek and before the flow resumes; and aiokafka's seek to
        committed does nothing for a partition with nothing committed.  Without
        this, such records are never fetched again and the partition's commit
        waits for them forever.
        """
        assigned = self.assignment()
        targets: dict[TP, int] = {}
        for tp in partitions:
            if tp not in assigned or tp not in self._read_offset:
                continue  # revoked, or the rebalance still has to seek it
            offset = self._read_offset[tp]
            if offset is None:  # nothing committed, nothing handed over since the assignment
                offset = (await self.earliest_offsets(tp)).get(tp) or 0
            targets[tp] = offset
        if not targets:
            return
        try:
            await self.seek_wait(targets)
            # seek_wait drops a read offset of 0, which would read as "a rebalance will seek it".
            self._read_offset.update(targets)
        except Exception as exc:  # noqa: BLE001 - the next rebalance seeks again
            self.log.warning("could not seek %s back after a rebalance: %r", sorted(targets), exc)

    def _to_chunk(self, tp: TP, records: list[Any], first_offset: int) -> ChunkMessage:
        last = records[-1]
        timestamp = last.timestamp / 1000.0 if last.timestamp is not None else None
        return ChunkMessage(
            last.topic,
            last.partition,
            last.offset,
            cast(float, timestamp),
            last.timestamp_type,
            None,
            None,
            records,
            None,
            0,
            sum(len(r.value or b"") for r in records),
            tp,
            generation_id=self.app.consumer_generation_id,
            first_offset=first_offset,
        )


class ChunkingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the fetch wait from our settings.

    Faust fixes ``fetch_max_wait_ms`` at 1500.  A broker that holds a fetch
    for the whole wait when it started empty (tansu, the bundled one, does)
    then adds up to 1.5 s per hop; real Kafka answers as soon as data arrives,
    so a short wait only costs an idle consumer a few more fetch requests.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings = getattr(self.app, "settings", None)  # an EtlApp carries them
        if settings is not None:
            consumer._fetch_max_wait_ms = int(settings.kafka.fetch_max_wait * 1000)
        return consumer


class Transport(faust_aiokafka.Transport):
    Consumer = ChunkingConsumer


def register() -> None:
    """Make ``etl://host:port`` broker URLs select this transport."""
    from faust.transport.drivers import TRANSPORTS

    TRANSPORTS.aliases.setdefault("etl", "streams.transport:Transport")


__all__ = [
    "ChunkMessage",
    "ChunkSchema",
    "ChunkingConsumer",
    "ChunkingConsumerThread",
    "Transport",
    "register",
    "_BaseConsumer",
]
