"""The delivering runtime: batching, retries, back-off, bisection, dead letters.

A sink only writes (``sinks.base``).  This module decides what happens around
each write, and it returns from :meth:`Deliverer.deliver` only when every
event of the batch was durably accepted by the sink or dead-lettered.  The
agent acks the Kafka offsets after that, so offsets commit only after a
durable write - and since Faust acks even when an agent raises, nothing here
ever raises out of ``deliver`` except cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mappers.errors import Reason, Rejection
from sinks.base import (
    BatchRejectedError,
    RetryableSinkError,
    Sink,
    SinkAuthError,
    SinkRejection,
    WriteResult,
)
from streams import metrics
from streams.retry import backoff

log = logging.getLogger("etl.delivery")

#: Sends dead letters (rejection, source coordinates) and waits for the broker.
DeadLetterFn = Callable[[list[tuple[Rejection, str, int, int]], str], Awaitable[None]]


class Deliverer:
    def __init__(
        self,
        sink: Sink,
        dead_letter: DeadLetterFn,
        *,
        retry_initial: float,
        retry_max: float,
        unexpected_attempts: int,
        auth_retry_interval: float,
        encode: Callable[[dict[str, Any]], bytes],
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.stage = f"sink:{sink.name}"
        self.dead_letter = dead_letter
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.unexpected_attempts = unexpected_attempts
        self.auth_retry_interval = auth_retry_interval
        self.encode = encode

    # ------------------------------------------------------------ public API
    async def deliver(self, events: list[dict[str, Any]]) -> None:
        caps = self.sink.capabilities
        ready: list[dict[str, Any]] = []
        refused: list[SinkRejection] = []
        for ev in events:
            fitted = self.sink.fit(ev) if caps.max_event_bytes else ev
            if isinstance(fitted, SinkRejection):
                refused.append(fitted)
            else:
                ready.append(fitted)
        if refused:
            await self._dead_letter(refused)
        for chunk in self._split(ready):
            await self._write(chunk, self.sink.write)

    async def deliver_rejected(self, records: list[dict[str, Any]]) -> None:
        """Store dead letters in the warehouse (rejected_events)."""

        def write(batch: list[dict[str, Any]]) -> WriteResult:
            self.sink.write_rejected(batch)
            return WriteResult(written=len(batch))

        for start in range(0, len(records), self.sink.capabilities.max_batch_events):
            await self._write(
                records[start : start + self.sink.capabilities.max_batch_events],
                write,
                rejected=True,
            )

    # --------------------------------------------------------------- helpers
    def _split(self, events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        caps = self.sink.capabilities
        if caps.max_batch_bytes is None:
            step = caps.max_batch_events
            return [events[i : i + step] for i in range(0, len(events), step)]
        chunks: list[list[dict[str, Any]]] = []
        current: list[dict[str, Any]] = []
        size = 0
        for ev in events:
            n = self.sink.event_size(ev) or 0
            if current and (
                len(current) >= caps.max_batch_events or size + n > caps.max_batch_bytes
            ):
                chunks.append(current)
                current, size = [], 0
            current.append(ev)
            size += n
        if current:
            chunks.append(current)
        return chunks

    async def _write(
        self,
        events: list[dict[str, Any]],
        write: Callable[[list[dict[str, Any]]], WriteResult],
        *,
        rejected: bool = False,
    ) -> None:
        attempt = 0
        unexpected = 0
        paused_at: float | None = None
        while True:
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(write, events)
            except asyncio.CancelledError:
                raise
            except RetryableSinkError as exc:
                delay = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else backoff(attempt, self.retry_initial, self.retry_max)
                )
                delay = min(delay, max(self.retry_max, 1.0) * 10)
                kind = "retryable"
                log.warning(
                    "sink %s: %s; retrying in %.2fs (attempt %d)",
                    self.name,
                    exc,
                    delay,
                    attempt + 1,
                )
            except SinkAuthError as exc:
                metrics.SINK_STOPPED.labels(self.name).set(1)
                log.error(
                    "sink %s STOPPED: destination refused our credentials (%s). Fix the key; "
                    "re-probing every %.0fs. Offsets do not advance meanwhile.",
                    self.name,
                    exc,
                    self.auth_retry_interval,
                )
                delay = self.auth_retry_interval
                kind = "auth"
            except BatchRejectedError as exc:
                await self._bisect(events, write, str(exc), rejected=rejected)
                self._resume(paused_at)
                return
            except Exception as exc:  # noqa: BLE001 - unexpected sink failure
                unexpected += 1
                if unexpected >= self.unexpected_attempts:
                    log.error(
                        "sink %s: %d failures in a row (%s: %s); isolating bad events",
                        self.name,
                        unexpected,
                        type(exc).__name__,
                        exc,
                    )
                    await self._bisect(
                        events, write, f"{type(exc).__name__}: {exc}", rejected=rejected
                    )
                    self._resume(paused_at)
                    return
                delay = backoff(attempt, self.retry_initial, self.retry_max)
                kind = "unexpected"
                log.warning(
                    "sink %s: unexpected %s: %s; retrying in %.2fs",
                    self.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            else:
                metrics.SINK_LATENCY.labels(self.name).observe(time.monotonic() - started)
                metrics.BATCH_SIZE.labels(self.name).observe(len(events))
                self._resume(paused_at)
                if result.rejected:
                    await self._dead_letter(result.rejected)
                if not rejected:
                    metrics.EVENTS_OUT.labels(self.stage, "delivered").inc(result.written)
                return
            metrics.RETRIES.labels(self.name, kind).inc()
            if paused_at is None:
                paused_at = time.time()
                metrics.PAUSED_SINCE.labels(self.name).set(paused_at)
            await asyncio.sleep(delay)
            metrics.BACKPRESSURE_SECONDS.labels(self.name).inc(delay)
            attempt += 1

    def _resume(self, paused_at: float | None) -> None:
        if paused_at is not None:
            metrics.PAUSED_SINCE.labels(self.name).set(0)
        metrics.SINK_STOPPED.labels(self.name).set(0)

    async def _bisect(
        self,
        events: list[dict[str, Any]],
        write: Callable[[list[dict[str, Any]]], WriteResult],
        error: str,
        *,
        rejected: bool,
    ) -> None:
        if len(events) == 1:
            if rejected:
                # A dead letter the warehouse cannot store: nothing further to
                # send it to, so say so loudly (it stays in the DLQ topic).
                log.error(
                    "sink %s: could not store dead letter %s: %s",
                    self.name,
                    events[0].get("rejection_id"),
                    error,
                )
                metrics.DLQ.labels(self.stage, "unstorable_dead_letter").inc()
                return
            await self._dead_letter([SinkRejection(events[0], Reason.SINK_REJECTED, error)])
            return
        middle = len(events) // 2
        await self._write(events[:middle], write, rejected=rejected)
        await self._write(events[middle:], write, rejected=rejected)

    async def _dead_letter(self, refused: list[SinkRejection]) -> None:
        items = []
        for r in refused:
            ev = r.event
            rejection = Rejection(
                r.reason,
                r.error,
                None,
                self.encode(ev),
                message_id=ev.get("message_id"),
                event=ev.get("event"),
            )
            items.append(
                (
                    rejection,
                    ev.get("source_topic") or "",
                    int(ev.get("source_partition") or 0),
                    int(ev.get("source_offset") or 0),
                )
            )
            metrics.EVENTS_OUT.labels(self.stage, "dead_lettered").inc()
        await self.dead_letter(items, self.stage)
