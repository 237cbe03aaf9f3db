"""The one retry loop: back off and try the same step again until it succeeds.

Faust acks an event even when the agent raises, so a failing step must never
leave an agent's loop body; the same holds for the tooling (a replay's
checkpoint must not advance past work that did not finish).  Every "until
durable" loop in the runtime goes through :func:`until_done`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("etl.retry")


def backoff(attempt: int, initial: float, cap: float) -> float:
    """Capped exponential back-off with full jitter."""
    return random.uniform(initial / 2, min(cap, initial * (2**attempt)))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 0.2
    cap: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(settings.delivery.retry_initial, settings.delivery.retry_max)

    def delay(self, attempt: int) -> float:
        return backoff(attempt, self.initial, self.cap)


async def until_done(
    step: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Await ``step()`` until it returns; log and back off after each failure
    (cancellation passes).
    """
    attempt = 0
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried, never skipped
            delay = policy.delay(attempt)
            if on_retry is not None:
                on_retry(exc, delay)
            log.error("%s failed (%s: %s); retrying in %.2fs", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
