"""``etl validate FILE.jsonl``: the normalize stage on each line, offline.

No broker and no warehouse: each line is one Kafka message value, run
through the same :class:`~streams.stages.NormalizeStage` the workers run
(parsing, validation, flag decisions, redaction), and its outcome is
reported: the events it became, or each rejection's reason, field and error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from ops.inprocess import Record
from sinks.settings import Settings
from streams.stages import NormalizeStage

#: The topic name lines are read under (it appears in source_topic).
FILE_TOPIC = "file"


@dataclass
class LineOutcome:
    line: int
    events: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejections

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "outcome": "ok" if self.ok else ("partial" if self.events else "rejected"),
            "events": [
                {"message_id": e["message_id"], "event": e["event"], "type": e["type"]}
                for e in self.events
            ],
            "rejections": self.rejections,
        }


@dataclass
class ValidationReport:
    path: Path
    lines: list[LineOutcome] = field(default_factory=list)

    @property
    def normalized(self) -> int:
        return sum(len(o.events) for o in self.lines)

    @property
    def rejected(self) -> int:
        return sum(len(o.rejections) for o in self.lines)

    def summary(self) -> dict[str, Any]:
        reasons = Counter(r["reason"] for o in self.lines for r in o.rejections)
        return {
            "path": str(self.path),
            "lines": len(self.lines),
            "normalized": self.normalized,
            "rejected": self.rejected,
            "rejected_by_reason": dict(reasons.most_common()),
        }


def file_lines(path: Path) -> list[bytes]:
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def validate_file(settings: Settings, path: Path) -> ValidationReport:
    stage = NormalizeStage(settings).start()
    report = ValidationReport(path)
    try:
        for number, value in enumerate(file_lines(path), start=1):
            batch = stage.process([Record(FILE_TOPIC, 0, number - 1, None, value)])
            outcome = LineOutcome(number, batch.events())
            for rejection, *_ in batch.dead:
                outcome.rejections.append(
                    {
                        "reason": rejection.reason,
                        "field": rejection.field,
                        "error": rejection.error,
                        "batch_index": rejection.batch_index,
                        "event": rejection.event,
                    }
                )
            report.lines.append(outcome)
    finally:
        stage.close()
    return report


def print_outcomes(report: ValidationReport, *, json_output: bool) -> None:
    if json_output:
        # One document, so that a script parses stdout whole.
        doc = {**report.summary(), "outcomes": [o.as_json() for o in report.lines]}
        click.echo(orjson.dumps(doc).decode())
        return
    for outcome in report.lines:
        names = ", ".join(e["event"] for e in outcome.events)
        if outcome.ok:
            click.echo(f"line {outcome.line}: ok ({names})")
            continue
        for r in outcome.rejections:
            where = f" item {r['batch_index']}" if r["batch_index"] is not None else ""
            field_text = f" [{r['field']}]" if r["field"] else ""
            click.echo(
                f"line {outcome.line}{where}: rejected {r['reason']}{field_text}: {r['error']}"
            )
        if outcome.events:
            click.echo(f"line {outcome.line}: also ok ({names})")
    s = report.summary()
    click.echo(
        f"{s['lines']} lines: {s['normalized']} events normalized, {s['rejected']} rejected",
        err=True,
    )
