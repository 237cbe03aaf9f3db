"""``etl validate FILE.jsonl``: the normalize stage offline, one outcome and reason per line."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from tests.cli_run import clean_env, etl
from tests.test_cli_errors import assert_bounded, dead_address, startup_seconds

GOOD = {
    "event": "tool_used",
    "distinct_id": "u1",
    "uuid": "0b6f1c9e-6f0a-4d8e-9a7c-1c2b3d4e5f60",
    "properties": {"tool_id": "t", "tool_type": "search", "status": "ok", "latency_ms": 5},
}
LINES = [
    orjson.dumps(GOOD),
    b"{not json",
    orjson.dumps({"event": "tool_used", "properties": {}}),
    b"[1]",
    orjson.dumps(
        {**GOOD, "uuid": None, "properties": {**GOOD["properties"], "latency_ms": "slow"}}
    ),
    orjson.dumps(
        {"batch": [{**GOOD, "uuid": None, "distinct_id": "u3"}, {"event": "", "distinct_id": "u3"}]}
    ),
]
# No broker and no warehouse: a dead bootstrap address changes nothing.
ENV = clean_env(ETL_KAFKA__BOOTSTRAP_SERVERS=dead_address())


def write(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_each_line_gets_its_outcome_and_reason_and_a_rejection_exits_1(tmp_path: Path) -> None:
    startup = startup_seconds(tmp_path)
    run = etl("validate", str(write(tmp_path, LINES)), env=ENV, cwd=tmp_path)
    assert run.code == 1 and "Traceback" not in run.stderr
    out = run.stdout.splitlines()
    assert out[0] == "line 1: ok (tool_used)"
    assert out[1].startswith("line 2: rejected invalid_json:")
    assert out[2].startswith("line 3: rejected missing_identity [distinct_id]:")
    assert out[3].startswith("line 4: rejected not_an_object:")
    assert out[4].startswith("line 5: rejected invalid_property [properties.latency_ms]:")
    assert "'slow'" in out[4]
    assert out[5].startswith("line 6 item 1: rejected missing_event_name [event]:")
    assert out[6] == "line 6: also ok (tool_used)"
    assert "6 lines: 2 events normalized, 5 rejected" in run.stderr
    assert not (tmp_path / "warehouse.duckdb").exists()
    assert_bounded(run.seconds, 5, startup)  # no broker wait


def test_json_is_one_document_with_every_outcome(tmp_path: Path) -> None:
    run = etl("validate", str(write(tmp_path, LINES)), "--json", env=ENV, cwd=tmp_path)
    assert run.code == 1
    doc = json.loads(run.stdout)  # stdout parsed whole
    assert (doc["lines"], doc["normalized"], doc["rejected"]) == (6, 2, 5)
    assert doc["rejected_by_reason"] == {
        "invalid_json": 1,
        "missing_identity": 1,
        "not_an_object": 1,
        "invalid_property": 1,
        "missing_event_name": 1,
    }
    outcomes = [o["outcome"] for o in doc["outcomes"]]
    assert outcomes == ["ok", "rejected", "rejected", "rejected", "rejected", "partial"]
    first = doc["outcomes"][0]["events"][0]
    assert first == {"message_id": GOOD["uuid"], "event": "tool_used", "type": "track"}
    assert doc["outcomes"][4]["rejections"][0]["field"] == "properties.latency_ms"


def test_a_clean_file_exits_0_and_a_missing_one_is_a_usage_error(tmp_path: Path) -> None:
    run = etl("validate", str(write(tmp_path, LINES[:1])), "--json", env=ENV, cwd=tmp_path)
    assert run.code == 0 and json.loads(run.stdout)["rejected"] == 0
    missing = etl("validate", "nope.jsonl", env=ENV, cwd=tmp_path)
    assert missing.code == 2 and "nope.jsonl" in missing.one_line_error()
