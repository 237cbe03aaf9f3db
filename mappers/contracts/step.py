"""The normalize stage's contracts step for one raw record: check, fix, dead-letter.

A dead-lettered event keeps its own raw form: for a batch envelope that is
its item (the normalizer emits one event per good item, in order, so the
n-th event is the n-th item not rejected already), as the normalizer's own
item rejections do.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from etl.config import ConfigError, CoreSettings
from mappers.contracts.check import ContractChecker
from mappers.contracts.plan import PlanError, load_plan
from mappers.errors import Reason, Rejection
from mappers.redact import Redactor


class ContractStep:
    def __init__(self, settings: CoreSettings) -> None:
        try:
            self.plan = load_plan(settings.contracts.plan_path)
        except PlanError as exc:
            # A bad plan is a configuration error: the process stops with it named, one line.
            raise ConfigError(f"contracts.plan_path (ETL_CONTRACTS__PLAN_PATH): {exc}") from None
        self.checker = ContractChecker(self.plan, Redactor(settings.redaction))
        #: (event, kind, action) -> violations since the last :meth:`take_counts`.
        self.counts: Counter[tuple[str, str, str]] = Counter()
        # Nothing to check beyond the normalizer's own validation: skip the step (hot path).
        self.active = self.plan.undeclared_events != "allow" or any(
            not c.generated for c in self.plan.events.values()
        )

    def apply(
        self, events: list[dict[str, Any]], raw: bytes, rejected: list[Rejection]
    ) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """The record's events that land, and the new dead letters (contract violations)."""
        if not self.active:
            return events, []
        outcome = self.checker.apply(events)
        self.counts.update(outcome.counts)
        if not outcome.dead:
            return events, []
        items = self._items(raw, len(events), rejected)
        kept: list[dict[str, Any]] = []
        dead: list[Rejection] = []
        for index, ev in enumerate(events):
            v = outcome.dead.get(index)
            if v is None:
                kept.append(ev)
                continue
            batch_index, item_raw = items[index] if items else (None, raw)
            field = f"properties.{v.property}" if v.property else "event"
            dead.append(
                Rejection(
                    Reason.CONTRACT_VIOLATION,
                    f"{ev['event']}: {v.kind}: {v.detail} (plan {self.plan.label})",
                    field,
                    item_raw,
                    batch_index=batch_index,
                    message_id=ev["message_id"],
                    event=ev["event"],
                )
            )
        return kept, dead

    @staticmethod
    def _items(
        raw: bytes, n: int, rejected: list[Rejection]
    ) -> list[tuple[int | None, bytes]] | None:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None  # sanitised bytes: the whole record stands for its one event
        if not (isinstance(doc, dict) and isinstance(doc.get("batch"), list)):
            return None
        if "event" in doc or "type" in doc:
            return None
        bad = {r.batch_index for r in rejected}
        good = [i for i in range(len(doc["batch"])) if i not in bad]
        if len(good) != n:
            return None
        return [(i, orjson.dumps(doc["batch"][i])) for i in good]

    def take_counts(self) -> Counter[tuple[str, str, str]]:
        counts, self.counts = self.counts, Counter()
        return counts
