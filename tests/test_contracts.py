"""Event contracts: each policy through the real normalize stage, the plan CLI, the view."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from mappers.contracts import PlanError, load_plan
from mappers.errors import Reason
from ops.inprocess import Record
from sinks.duckdb import DuckDBSettings, DuckDBSink
from sinks.settings import Settings
from streams import metrics
from streams.outputs import DeadLetters, MemoryOutput
from streams.stages import NormalizeStage, SinkStage
from tests.conftest import warehouse_rows

PLAN = """
version: 7
name: platform-plan
undeclared_events: {undeclared}
events:
  workflow_saved:
    policy: {{not_in_enum: allow, wrong_type: drop_property}}
    properties:
      flow_id: {{type: string, required: true}}
      mode: {{type: string, enum: [draft, published]}}
      nodes: {{type: integer, minimum: 0, maximum: 500}}
      owner_email: {{type: string, pii: hash}}
      note: {{type: string, pii: redact}}
  strict_event:
    additional_properties: false
    policy: dead_letter
    properties:
      a: {{type: number}}
  flow_executed:
    properties:
      flow_id: {{type: string, required: true}}
"""


def write_plan(tmp_path: Path, undeclared: str = "allow") -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(undeclared=undeclared))
    return path


def settings_for(tmp_path: Path, plan: Path | None) -> Settings:
    return Settings(
        contracts={"plan_path": plan},
        redaction={"hmac_secret": "test-key"},
        duckdb=DuckDBSettings(path=tmp_path / "wh.duckdb"),
        erasure={"state_path": tmp_path / "erasure.sqlite"},
        flags={"gates": {}},
    )


def raw(name: str, props: dict, distinct_id: str = "u1") -> bytes:
    return orjson.dumps({"event": name, "distinct_id": distinct_id, "properties": props})


def run(stage: NormalizeStage, *values: bytes):
    return stage.process([Record("raw", 0, i, None, v) for i, v in enumerate(values)])


def violations(event: dict) -> list[tuple[str, str | None, str]]:
    found = (event["context"].get("etl") or {}).get("violations", [])
    return [(v["kind"], v["property"], v["action"]) for v in found]


def test_each_policy_allow_drop_property_and_dead_letter(tmp_path):
    stage = NormalizeStage(settings_for(tmp_path, write_plan(tmp_path))).start()
    before = metrics.CONTRACT_VIOLATIONS.labels("workflow_saved", "wrong_type", "drop_property")
    before_n = before._value.get()
    batch = run(
        stage,
        # allow (not_in_enum) and drop_property (wrong_type) on one event; PII protected.
        raw(
            "workflow_saved",
            {
                "flow_id": "f1",
                "mode": "sideways",
                "nodes": "many",
                "owner_email": "a@b.example",
                "note": "mail me at x@y.example",
            },
        ),
        # dead_letter: the required flow_id is missing.
        raw("workflow_saved", {"mode": "draft"}),
        # A clean one.
        raw("workflow_saved", {"flow_id": "f2", "nodes": 3}),
        # out_of_range is dead_letter by default.
        raw("workflow_saved", {"flow_id": "f3", "nodes": 501}),
        # An undeclared property on a closed contract whose policy is dead_letter.
        raw("strict_event", {"a": 1, "b": 2}),
        # A platform event: the plan adds a requirement to the generated contract.
        raw("flow_executed", {"time_ms": 5}),
        # Undeclared events are allowed by default, with nothing recorded.
        raw("anything_else", {"x": 1}),
    )
    events = {e["properties"].get("flow_id") or e["event"]: e for e in batch.events()}
    assert set(events) == {"f1", "f2", "anything_else"}

    f1 = events["f1"]
    assert violations(f1) == [
        ("not_in_enum", "mode", "allow"),
        ("wrong_type", "nodes", "drop_property"),
    ]
    assert f1["context"]["etl"]["contract"] == "platform-plan@7"
    assert f1["properties"]["mode"] == "sideways"  # allowed: kept as sent
    assert "nodes" not in f1["properties"]  # dropped
    assert f1["properties"]["owner_email"] == stage.governance.redactor.keyed_hash("a@b.example")
    assert "x@y.example" not in f1["properties"]["note"] and "[email]" in f1["properties"]["note"]
    assert violations(events["f2"]) == [] and "etl" not in events["f2"]["context"]
    assert violations(events["anything_else"]) == []

    dead = sorted((r.reason, r.event, r.field, r.error.split(": ")[1]) for r, *_ in batch.dead)
    assert dead == [
        (Reason.CONTRACT_VIOLATION, "flow_executed", "properties.flow_id", "missing_required"),
        (Reason.CONTRACT_VIOLATION, "strict_event", "properties.b", "undeclared_property"),
        (Reason.CONTRACT_VIOLATION, "workflow_saved", "properties.flow_id", "missing_required"),
        (Reason.CONTRACT_VIOLATION, "workflow_saved", "properties.nodes", "out_of_range"),
    ]
    # The dead letter keeps the event's own raw form, and no value in the error text.
    missing = next(
        r for r, *_ in batch.dead if r.event == "workflow_saved" and "missing" in r.error
    )
    assert orjson.loads(missing.raw)["properties"] == {"mode": "draft"}
    out_of_range = next(r for r, *_ in batch.dead if "out_of_range" in r.error)
    assert "501" not in out_of_range.error
    assert before._value.get() == before_n + 1


@pytest.mark.parametrize("undeclared,expect_landed", [("flag", True), ("reject", False)])
def test_undeclared_events_flag_or_reject(tmp_path, undeclared, expect_landed):
    stage = NormalizeStage(settings_for(tmp_path, write_plan(tmp_path, undeclared))).start()
    identify = orjson.dumps({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}})
    batch = run(stage, raw("surprise", {"x": 1}), identify)
    names = [e["event"] for e in batch.events()]
    assert "$identify" in names or "identify" in names  # non-track calls are never "undeclared"
    if expect_landed:
        surprise = next(e for e in batch.events() if e["event"] == "surprise")
        assert violations(surprise) == [("undeclared_event", None, "allow")]
        assert batch.dead == []
    else:
        assert "surprise" not in names
        assert [(r.reason, r.field) for r, *_ in batch.dead] == [
            (Reason.CONTRACT_VIOLATION, "event")
        ]


def test_batch_envelope_dead_letters_only_the_breaking_item(tmp_path):
    stage = NormalizeStage(settings_for(tmp_path, write_plan(tmp_path))).start()
    envelope = orjson.dumps(
        {
            "batch": [
                {"event": "workflow_saved", "distinct_id": "a", "properties": {"flow_id": "ok"}},
                "not an object",
                {"event": "workflow_saved", "distinct_id": "b", "properties": {}},
            ]
        }
    )
    batch = run(stage, envelope)
    assert [e["properties"]["flow_id"] for e in batch.events()] == ["ok"]
    contract = [r for r, *_ in batch.dead if r.reason == Reason.CONTRACT_VIOLATION]
    assert len(contract) == 1 and contract[0].batch_index == 2
    assert orjson.loads(contract[0].raw)["distinct_id"] == "b"


def test_no_plan_keeps_todays_behaviour_for_platform_and_other_events(tmp_path):
    stage = NormalizeStage(settings_for(tmp_path, None)).start()
    batch = run(stage, raw("flow_executed", {"time_ms": 5}), raw("custom", {"a": 1}))
    assert [e["event"] for e in batch.events()] == ["flow_executed", "custom"]
    assert batch.dead == [] and all(violations(e) == [] for e in batch.events())


def test_bad_plans_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nevents:\n  x:\n    properties:\n      p: {type: strnig}\n")
    with pytest.raises(PlanError, match=r"bad.yaml: events.x.properties.p.type"):
        load_plan(bad)
    bad.write_text("version: 1\nevents:\n  x:\n    policy: {wrong_kind: allow}\n")
    with pytest.raises(PlanError, match="unknown violation kind 'wrong_kind'"):
        load_plan(bad)
    with pytest.raises(PlanError, match="missing.yaml"):
        load_plan(tmp_path / "missing.yaml")


def test_landed_violations_show_in_the_contract_violations_view(tmp_path):
    settings = settings_for(tmp_path, write_plan(tmp_path))
    stage = NormalizeStage(settings).start()
    batch = run(stage, raw("workflow_saved", {"flow_id": "f1", "mode": "odd", "nodes": "x"}))
    sink_stage = SinkStage(settings, DuckDBSink(settings), DeadLetters(MemoryOutput(), settings))

    async def deliver() -> None:
        await sink_stage.open()
        await sink_stage.deliver(batch.events())
        await sink_stage.close()

    asyncio.run(deliver())
    rows = warehouse_rows(
        settings.duckdb.path,
        "SELECT event, plan, kind, property, action FROM contract_violations ORDER BY kind",
    )
    assert rows == [
        ("workflow_saved", "platform-plan@7", "not_in_enum", "mode", "allow"),
        ("workflow_saved", "platform-plan@7", "wrong_type", "nodes", "drop_property"),
    ]


def etl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_plan_check_and_export_cli(tmp_path):
    plan = write_plan(tmp_path)
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(
        b"\n".join(
            [
                raw("workflow_saved", {"flow_id": "f", "mode": "odd"}),
                raw("workflow_saved", {}),
                raw("workflow_saved", {"flow_id": "fine"}),
                b"{not json",
            ]
        )
        + b"\n"
    )
    proc = etl("plan", "check", str(lines), "--plan", str(plan), "--json")
    assert proc.returncode == 1, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout: only JSON
    summary = docs[-1]
    assert summary["plan"] == "platform-plan@7" and summary["lines"] == 4
    assert summary["violations_by_kind"] == {"not_in_enum": 1, "missing_required": 1}
    assert summary["violations_by_action"] == {"allow": 1, "dead_letter": 1}
    assert summary["rejected_other"] == 1
    assert [d["line"] for d in docs[:-1]] == [1, 2, 4]

    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(raw("workflow_saved", {"flow_id": "fine"}) + b"\n")
    assert etl("plan", "check", str(clean), "--plan", str(plan)).returncode == 0

    missing = etl("plan", "check", str(clean), "--plan", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "--plan" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

    # A bad plan stops any command that runs the normalize stage: one line naming it, exit 2.
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nevents:\n  x:\n    properties:\n      p: {type: strnig}\n")
    broken = etl("validate", str(clean), env={"ETL_CONTRACTS__PLAN_PATH": str(bad)})
    assert broken.returncode == 2 and "ETL_CONTRACTS__PLAN_PATH" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1

    exported = etl("plan", "export", "--plan", str(plan))
    assert exported.returncode == 0, exported.stderr
    schema = json.loads(exported.stdout)
    ws = schema["$defs"]["workflow_saved"]
    assert ws["required"] == ["flow_id"]
    assert ws["properties"]["mode"]["enum"] == ["draft", "published"]
    assert ws["properties"]["nodes"] == {"type": "integer", "minimum": 0, "maximum": 500}
    assert schema["$defs"]["strict_event"]["additionalProperties"] is False
    # The platform events are generated from the models.
    assert schema["$defs"]["prompt_blocked"]["properties"]["match_score"] == {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
    }
    assert set(schema["$defs"]) >= {"flow_executed", "$ai_generation", "$feature_flag_called"}


def test_suppressed_people_and_contract_dead_letters_in_one_envelope(tmp_path):
    from mappers.suppression import add, connect, id_hash

    settings = settings_for(tmp_path, write_plan(tmp_path))
    con = connect(settings.erasure.state_path)
    add(con, [id_hash(b"test-key", "gone")], "req", "now")
    con.close()
    stage = NormalizeStage(settings).start()
    envelope = orjson.dumps(
        {
            "batch": [
                {"event": "workflow_saved", "distinct_id": "gone", "properties": {}},
                {"event": "workflow_saved", "distinct_id": "gone", "properties": {"flow_id": "x"}},
                {"event": "workflow_saved", "distinct_id": "b", "properties": {}},
                {"event": "workflow_saved", "distinct_id": "c", "properties": {"flow_id": "y"}},
            ]
        }
    )
    batch = run(stage, envelope)
    assert [e["distinct_id"] for e in batch.events()] == ["c"]
    # b's dead letter is b's own item; nothing of the forgotten person is kept, not even
    # the dead letter of their own broken event.
    assert [(r.batch_index, orjson.loads(r.raw)["distinct_id"]) for r, *_ in batch.dead] == [
        (2, "b")
    ]

    # anonymise: the event lands under a pseudonym, without the person's ids.
    settings = settings.model_copy(
        update={"erasure": settings.erasure.model_copy(update={"suppressed_mode": "anonymise"})}
    )
    stage = NormalizeStage(settings).start()
    identify = orjson.dumps(
        {"type": "identify", "userId": "gone", "anonymousId": "dev", "traits": {"email": "e@x.io"}}
    )
    (event,) = run(stage, identify).events()
    assert event["distinct_id"].startswith("forgotten_") and event["user_id"] is None
    assert (
        "gone" not in orjson.dumps(event).decode() and "e@x.io" not in orjson.dumps(event).decode()
    )


def test_an_exported_json_schema_plan_checks_the_same(tmp_path):
    yaml_plan = write_plan(tmp_path, "flag")
    exported = etl("plan", "export", "--plan", str(yaml_plan))
    assert exported.returncode == 0, exported.stderr
    json_plan = tmp_path / "plan.schema.json"
    json_plan.write_text(exported.stdout)
    values = [
        raw(
            "workflow_saved", {"flow_id": "f1", "mode": "odd", "nodes": "x", "owner_email": "a@b.c"}
        ),
        raw("workflow_saved", {"mode": "draft"}),
        raw("strict_event", {"a": 1, "b": 2}),
        raw("flow_executed", {"time_ms": 5}),
        raw("surprise", {}),
    ]

    def outcome(plan: Path) -> tuple[list, list]:
        batch = run(NormalizeStage(settings_for(tmp_path, plan)).start(), *values)
        landed = [(e["event"], violations(e), e["properties"]) for e in batch.events()]
        dead = sorted((r.event, r.field, r.error.split(" (plan")[0]) for r, *_ in batch.dead)
        return landed, dead

    assert outcome(json_plan) == outcome(yaml_plan)
    assert load_plan(json_plan).label == "platform-plan@7"
