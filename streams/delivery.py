"""The delivering runtime: batching, retries, back-off, bisection, dead letters.

A sink only writes (``sinks.base``).  This module decides what happens around
each write, and it returns from :meth:`Deliverer.deliver` only when every
event of the batch was durably accepted by the sink or dead-lettered.  The
agent acks the Kafka offsets after that, so offsets commit only after a
durable write - and since Faust acks even when an agent raises, nothing here
ever raises out of ``deliver`` except cancellation (:class:`DeliveryInterrupted`
when the process is stopping).

Errors are judged by cause, not by count.  A fault of the environment (disk
full, read-only, permission, lock, connection, shutdown; see
``sinks.base.environment_cause``) pauses the sink and retries the same batch
until it succeeds, with the cause in the logs and the ``etl_sink_fault`` gauge.
Only errors that may depend on the events are bisected, and only after a
known-good probe write succeeds; otherwise the fault is the destination's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
T = TypeVar("T")

#: How long a cancelled sink call (a write, a probe, an open) is waited for before the
#: cancellation passes on.
WRITE_GRACE_SECONDS = 30.0


async def sink_call_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a sink call in a thread; on cancellation, let it finish before passing it on.

    A call in progress is not abandoned under the sink's feet: a write's
    connection, or one an open is setting up, is closed next; a batch stays
    unacked either way.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    # Its outcome is read even when nobody awaits it any more (no "never retrieved").
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait({task}, timeout=WRITE_GRACE_SECONDS)
        raise


#: What a dead letter the warehouse refuses as it is keeps (its identity, reason and source).
REDUCED_DEAD_LETTER_FIELDS = frozenset(
    {
        "rejection_id",
        "reason",
        "field",
        "stage",
        "event",
        "message_id",
        "raw_encoding",
        "raw_size",
        "raw_sha256",
        "source_topic",
        "source_partition",
        "source_offset",
        "batch_index",
        "rejected_at",
    }
)


class DeliveryInterrupted(asyncio.CancelledError):
    """The process is stopping: the batch is left unacked, to be redelivered (never isolated)."""


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
        #: Set when the process is stopping: retries end, nothing is isolated or dead-lettered.
        self.stopping = threading.Event()

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
        fault: str | None = None
        while True:
            self._check_stopping()
            started = time.monotonic()
            try:
                result = await sink_call_in_thread(write, events)
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
                fault = self._set_fault(fault, self.sink.environment_cause(exc))
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
                self._resume(paused_at, fault)
                return
            except Exception as exc:  # noqa: BLE001 - classified below
                cause = self.sink.environment_cause(exc)
                if cause == "shutdown" or self.stopping.is_set():
                    # Not the events' fault and nothing to retry: leave the
                    # batch unacked, so it is redelivered after the restart.
                    log.warning(
                        "sink %s: shutting down during a write; %d events stay uncommitted",
                        self.name,
                        len(events),
                    )
                    self._resume(paused_at, fault)
                    raise DeliveryInterrupted(f"sink {self.name}: shutting down") from None
                if cause is None:
                    unexpected += 1
                    if unexpected >= self.unexpected_attempts:
                        cause = await self._probe()
                        if cause is None:
                            log.error(
                                "sink %s: %d failures in a row (%s: %s) and a probe write "
                                "succeeds; isolating bad events",
                                self.name,
                                unexpected,
                                type(exc).__name__,
                                exc,
                            )
                            await self._bisect(
                                events, write, f"{type(exc).__name__}: {exc}", rejected=rejected
                            )
                            self._resume(paused_at, fault)
                            return
                        # The destination cannot take even a known-good write.
                        unexpected = 0
                if cause is not None:
                    fault = self._set_fault(fault, cause)
                    delay = backoff(attempt, self.retry_initial, self.retry_max)
                    kind = f"environment:{cause}"
                    log.warning(
                        "sink %s PAUSED by its environment (%s: %s: %s); %d events wait, "
                        "offsets do not advance; retrying in %.2fs",
                        self.name,
                        cause,
                        type(exc).__name__,
                        exc,
                        len(events),
                        delay,
                    )
                else:
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
                if fault is not None:
                    log.warning("sink %s: resumed after %s", self.name, fault)
                self._resume(paused_at, fault)
                if result.rejected:
                    await self._dead_letter(result.rejected)
                if not rejected:
                    metrics.EVENTS_OUT.labels(self.stage, "delivered").inc(result.written)
                return
            metrics.RETRIES.labels(self.name, kind).inc()
            if paused_at is None:
                paused_at = time.time()
                metrics.PAUSED_SINCE.labels(self.name).set(paused_at)
            await self._sleep(delay)
            metrics.BACKPRESSURE_SECONDS.labels(self.name).inc(delay)
            attempt += 1

    def _check_stopping(self) -> None:
        if self.stopping.is_set():
            raise DeliveryInterrupted(f"sink {self.name}: shutting down")

    async def _sleep(self, delay: float) -> None:
        # Short steps, so a shutdown does not wait out a long back-off.
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            self._check_stopping()
            await asyncio.sleep(min(left, 0.25))
        self._check_stopping()

    async def _probe(self) -> str | None:
        """None if a known-good write succeeds; else the environment fault it met."""
        try:
            await sink_call_in_thread(self.sink.probe)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a known-good write
            cause = self.sink.environment_cause(exc) or "io"
            log.warning(
                "sink %s: probe write failed too (%s: %s): the fault is the destination's",
                self.name,
                type(exc).__name__,
                exc,
            )
            return cause
        return None

    def _set_fault(self, current: str | None, cause: str | None) -> str | None:
        if cause is None or cause == current:
            return current
        if current is not None:
            metrics.SINK_FAULT.labels(self.name, current).set(0)
        metrics.SINK_FAULT.labels(self.name, cause).set(1)
        return cause

    def _resume(self, paused_at: float | None, fault: str | None = None) -> None:
        if paused_at is not None:
            metrics.PAUSED_SINCE.labels(self.name).set(0)
        if fault is not None:
            metrics.SINK_FAULT.labels(self.name, fault).set(0)
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
                await self._store_reduced(events[0], write, error)
                return
            await self._dead_letter([SinkRejection(events[0], Reason.SINK_REJECTED, error)])
            return
        middle = len(events) // 2
        await self._write(events[:middle], write, rejected=rejected)
        await self._write(events[middle:], write, rejected=rejected)

    async def _store_reduced(
        self,
        record: dict[str, Any],
        write: Callable[[list[dict[str, Any]]], WriteResult],
        error: str,
    ) -> None:
        """A dead letter the warehouse refuses: store it without its payload, never drop it.

        Its offset commits only after this returns, so it keeps being retried
        (with back-off) until the reduced record is stored.
        """
        log.error(
            "sink %s: cannot store dead letter %s as it is (%s); storing it without its payload",
            self.name,
            record.get("rejection_id"),
            error,
        )
        metrics.DLQ.labels(self.stage, "dead_letter_stored_reduced").inc()
        reduced = {
            k: v for k, v in record.items() if k in REDUCED_DEAD_LETTER_FIELDS and v is not None
        }
        reduced["raw_payload"] = None
        reduced["error"] = (f"{record.get('error') or ''} [payload not storable: {error}]")[:2000]
        attempt = 0
        while True:
            self._check_stopping()
            try:
                await sink_call_in_thread(write, [reduced])
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried until stored
                delay = backoff(attempt, self.retry_initial, self.retry_max)
                log.error(
                    "sink %s: dead letter %s still not stored (%s: %s); retrying in %.2fs",
                    self.name,
                    record.get("rejection_id"),
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._sleep(delay)
                attempt += 1

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
