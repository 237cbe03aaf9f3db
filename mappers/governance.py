"""Data governance glue: flag gates and PII redaction at the two pipeline hooks.

* :class:`NormalizeGovernance` (normalize stage, after normalizing): evaluates
  once, per event, the flags that gate that event at any enabled sink and
  records each decision in ``context.flags.<flag> = {enabled, variant,
  source}``; then redacts sensitive paths (unless
  ``redaction.keep_raw_in_warehouse``), in the events and in the raw payload
  of the dead letters (else a rejected prompt would land verbatim in
  ``rejected_events``).  Every sink therefore gates from the
  same decision, and sink workers never do flag I/O.
* :class:`SinkGovernance` (each sink stage, before delivery): drops the
  events whose gating flag is off for this sink (and says how many per flag),
  and for a non-warehouse sink redacts whatever is still raw (idempotent, so
  with the default it is a no-op).

An event with no recorded decision (normalized before its gate was
configured) is forwarded: a missing decision is the open default.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from etl.config import CoreSettings
from mappers.errors import Rejection
from mappers.flags import FlagService
from mappers.redact import Redactor

log = logging.getLogger("etl.governance")


def flags_by_event(settings: CoreSettings) -> dict[str, tuple[str, ...]]:
    """Event name -> the flags gating it at any enabled sink."""
    out: dict[str, set[str]] = {}
    for sink, mapping in settings.flags.gates.items():
        if sink not in settings.sinks:
            continue
        for event, flag in mapping.items():
            out.setdefault(event, set()).add(flag)
    return {event: tuple(sorted(flags)) for event, flags in out.items()}


class NormalizeGovernance:
    """Built cheaply; the flag service starts on first use (or :meth:`start`)."""

    def __init__(self, settings: CoreSettings, service: FlagService | None = None) -> None:
        self.settings = settings
        self.gated_events = flags_by_event(settings)
        self.service = service
        self.redactor = Redactor(settings.redaction)
        self.redact = not settings.redaction.keep_raw_in_warehouse
        self._started = False

    def start(self) -> NormalizeGovernance:
        if self._started:
            return self
        self._started = True
        if self.service is None and self.gated_events:
            self.service = FlagService(self.settings)
        if self.service is not None:
            self.service.start()
        if self.settings.redaction.hmac_secret is None:
            log.warning(
                "redaction.hmac_secret is not set (ETL_REDACTION__HMAC_SECRET): "
                "redacted values keep no hash"
            )
        if self.settings.redaction.keep_raw_in_warehouse:
            log.warning(
                "redaction.keep_raw_in_warehouse is on: the warehouse stores raw sensitive text"
            )
        return self

    def close(self) -> None:
        if self.service is not None:
            self.service.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One batch's scope: the flag service's remote-call budget covers all of it,
        however many :meth:`apply_within` calls it is applied in.
        """
        if not self._started:
            self.start()
        service = self.service
        if service is None:
            yield
            return
        service.begin_batch()
        try:
            yield
        finally:
            service.end_batch()

    def apply(self, events: list[dict[str, Any]], rejections: Iterable[Rejection] = ()) -> None:
        """Attach flag decisions and redact, in place (dead letters' raw payloads too)."""
        with self.batch():
            self.apply_within(events, rejections)

    def apply_within(
        self, events: list[dict[str, Any]], rejections: Iterable[Rejection] = ()
    ) -> None:
        """:meth:`apply` for part of a batch, inside :meth:`batch`."""
        service = self.service
        gated = self.gated_events
        if service is not None:
            decide = service.decide
            for ev in events:
                keys = gated.get(ev["event"])
                if keys is None:
                    continue
                context = ev["context"]
                recorded = context.get("flags")
                if not isinstance(recorded, dict):
                    recorded = context["flags"] = {}
                did, ws = ev["distinct_id"], ev["workspace_id"]
                for key in keys:
                    recorded[key] = decide(key, did, ws).as_context()
        if self.redact:
            self.redactor.redact_events(events)
            # A rejected prompt must not reach rejected_events verbatim either.
            for rejection in rejections:
                if rejection.redaction_hashes is not None:
                    continue  # redacted before: a requeued dead letter
                redacted = self.redactor.redact_raw(rejection.raw)
                if redacted is not None:
                    rejection.raw, rejection.redaction_hashes = redacted

    def restore_redaction(self, events: list[dict[str, Any]], hashes: dict[str, str]) -> None:
        """Events re-read from a redacted dead letter: already redacted,
        with the original's hashes.
        """
        if self.redact:
            for ev in events:
                self.redactor.restore(ev, hashes)


class SinkGovernance:
    def __init__(self, settings: CoreSettings, sink: str, *, third_party: bool) -> None:
        self.sink = sink
        self.gates = dict(settings.flags.gates.get(sink, {}))
        self.redactor = Redactor(settings.redaction) if third_party else None

    def prepare(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter[str]]:
        """The events this sink may receive, redacted for a third party,
        and how many each flag held back.
        """
        kept = events
        dropped: Counter[str] = Counter()
        if self.gates:
            gates = self.gates
            kept = []
            for ev in events:
                flag = gates.get(ev["event"])
                if flag is not None:
                    recorded = (ev.get("context") or {}).get("flags")
                    decision = recorded.get(flag) if isinstance(recorded, dict) else None
                    if isinstance(decision, dict) and decision.get("enabled") is False:
                        dropped[flag] += 1
                        continue
                kept.append(ev)
        if self.redactor is not None:
            self.redactor.redact_events(kept)
        return kept, dropped
