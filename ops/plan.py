"""``etl plan check`` and ``etl plan export``: the tracking plan, offline.

``check`` runs each line of a JSON-lines file through the same
:class:`~streams.stages.NormalizeStage` the workers run (with the plan given
by ``--plan`` or ``contracts.plan_path``) and reports every contract
violation: those that would land (``allow``, ``drop_property``) and those
that would be dead-lettered.  ``export`` prints the plan, with the platform
events' generated contracts, as JSON Schema.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from mappers.contracts import dumps_schema, load_plan
from mappers.errors import Reason
from ops.inprocess import Record
from ops.validate import FILE_TOPIC, file_lines
from sinks.settings import Settings
from streams.stages import NormalizeStage


@dataclass
class PlanLine:
    line: int
    violations: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "events": self.events,
            "violations": self.violations,
            "rejections": self.rejections,
        }


@dataclass
class PlanReport:
    path: Path
    plan: str
    lines: list[PlanLine] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return sum(len(line.violations) for line in self.lines)

    def summary(self) -> dict[str, Any]:
        kinds = Counter(v["kind"] for line in self.lines for v in line.violations)
        actions = Counter(v["action"] for line in self.lines for v in line.violations)
        by_event = Counter(v["event"] for line in self.lines for v in line.violations)
        return {
            "summary": True,
            "path": str(self.path),
            "plan": self.plan,
            "lines": len(self.lines),
            "events": sum(line.events for line in self.lines),
            "violations": self.violations,
            "violations_by_kind": dict(kinds.most_common()),
            "violations_by_action": dict(actions.most_common()),
            "violations_by_event": dict(by_event.most_common()),
            "rejected_other": sum(len(line.rejections) for line in self.lines),
        }


def check_file(settings: Settings, path: Path) -> PlanReport:
    stage = NormalizeStage(settings).start()
    report = PlanReport(path, stage.contracts.plan.label)
    try:
        for number, value in enumerate(file_lines(path), start=1):
            batch = stage.process([Record(FILE_TOPIC, 0, number - 1, None, value)])
            line = PlanLine(number, events=batch.normalized)
            for ev in batch.events():
                for v in (ev["context"].get("etl") or {}).get("violations", ()):
                    line.violations.append(
                        {"event": ev["event"], "message_id": ev["message_id"], **v}
                    )
            for rejection, *_ in batch.dead:
                if rejection.reason == Reason.CONTRACT_VIOLATION:
                    kind = rejection.error.split(": ", 2)[1]
                    prop = rejection.field.removeprefix("properties.") if rejection.field else None
                    line.violations.append(
                        {
                            "event": rejection.event,
                            "message_id": rejection.message_id,
                            "kind": kind,
                            "property": None if prop == "event" else prop,
                            "detail": rejection.error,
                            "action": "dead_letter",
                        }
                    )
                else:
                    line.rejections.append(
                        {
                            "reason": rejection.reason,
                            "field": rejection.field,
                            "error": rejection.error,
                        }
                    )
            report.lines.append(line)
    finally:
        stage.close()
    return report


def print_report(report: PlanReport, *, json_output: bool) -> None:
    if json_output:
        for line in report.lines:
            if line.violations or line.rejections:
                click.echo(orjson.dumps(line.as_json()).decode())
        click.echo(orjson.dumps(report.summary()).decode())
        return
    for line in report.lines:
        for v in line.violations:
            prop = f" [{v['property']}]" if v["property"] else ""
            click.echo(f"line {line.line}: {v['event']}: {v['kind']}{prop} -> {v['action']}")
        for r in line.rejections:
            click.echo(f"line {line.line}: rejected {r['reason']} before the plan: {r['error']}")
    s = report.summary()
    click.echo(
        f"{s['lines']} lines, {s['events']} events checked against {s['plan']}: "
        f"{s['violations']} violations",
        err=True,
    )


def export_schema(plan_path: Path | None) -> str:
    return dumps_schema(load_plan(plan_path))
