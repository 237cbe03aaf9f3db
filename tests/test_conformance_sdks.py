"""Conformance with the real client SDKs: what the clients sent is what the warehouse holds.

posthog (Python), rudder-sdk-python, posthog-node and @rudderstack/rudder-sdk-node
send to the local recorders in tests/servers; their exact request bodies go onto
the raw topic, through the real workers, into a real DuckDB file.  Each row is
then compared with the body it came from, field by field, with the expectations
computed here from the vendors' documented rules, not by the mapper:

* ids, event names, identities, workspace, typed values, page name and category,
  group, identify and alias calls;
* every time field: ``original_timestamp``, ``stated_timestamp``, ``sent_at`` as
  sent; ``timestamp`` by PostHog ingestion's skew rule (PostHog bodies) or
  rudder-server's (an explicit ``timestamp`` kept as given, else
  ``receivedAt - (sentAt - originalTimestamp)``).

The Node SDKs are installed from tests/package.json (lockfile) by the session
fixture below with npm; node and npm exist here and in CI, so nothing is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.drive_python import drive_posthog, drive_rudder
from tests.conftest import warehouse_rows
from tests.servers.posthog import PostHogServer
from tests.servers.rudderstack import RudderStackServer

TESTS = Path(__file__).parent
EXPLICIT = datetime(2026, 11, 16, 8, 0, tzinfo=UTC)  # a past time the callers set
PH_KEY, WRITE_KEY = "phc_conformance", "wk_conformance"
SEGMENT_NAMES = {
    "identify": "$identify",
    "group": "$groupidentify",
    "page": "$pageview",
    "screen": "$screen",
    "alias": "$create_alias",
}
PH_TYPES = {
    "$identify": "identify",
    "$set": "identify",
    "$groupidentify": "group",
    "$pageview": "page",
    "$screen": "screen",
    "$create_alias": "alias",
}


@pytest.fixture(scope="session")
def node_sdks() -> Path:
    """The Node SDKs of tests/package.json, installed by npm from the lockfile."""
    modules = TESTS / "node_modules"
    if (
        not (modules / "posthog-node").is_dir()
        or not (modules / "@rudderstack" / "rudder-sdk-node").is_dir()
    ):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is required for the SDK conformance tests (node 20 + npm)")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=TESTS,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            pytest.fail(f"npm ci failed: {proc.stderr[-2000:]}")
    return modules


def recorded_bodies(node_sdks: Path) -> list[tuple[str, bytes]]:
    """(sdk, exact request body) for every call the four SDKs made."""
    bodies: list[tuple[str, bytes]] = []
    with PostHogServer(PH_KEY) as ph, RudderStackServer(WRITE_KEY) as rs:
        drive_posthog(ph.url, PH_KEY, EXPLICIT)
        drive_rudder(rs.url, WRITE_KEY, EXPLICIT)
        py_ph, py_rs = len(ph.requests), len(rs.requests)
        cfg = {
            "posthog_host": ph.url,
            "posthog_key": PH_KEY,
            "rudder_url": rs.url,
            "write_key": WRITE_KEY,
            "explicit_ts": EXPLICIT.isoformat().replace("+00:00", "Z"),
        }
        proc = subprocess.run(
            ["node", str(TESTS / "conformance" / "drive_node.cjs"), json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": _path(), "NODE_PATH": str(node_sdks)},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        for i, req in enumerate(ph.requests):
            assert req.path.rstrip("/") == "/batch", req.path
            bodies.append(("posthog-python" if i < py_ph else "posthog-node", req.body))
        for i, req in enumerate(rs.requests):
            assert req.path.rstrip("/") == "/v1/batch", req.path
            bodies.append(("rudder-sdk-python" if i < py_rs else "rudder-sdk-node", req.body))
    return bodies


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")


def utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def close(a: datetime | None, b: datetime | None, tolerance_ms: float = 1.0) -> bool:
    if a is None or b is None:
        return a is b
    return abs((a - b).total_seconds()) * 1000 <= tolerance_ms


COLUMNS = (
    "message_id, type, event, distinct_id, user_id, anonymous_id, workspace_id, timestamp, "
    "original_timestamp, stated_timestamp, sent_at, received_at, properties, context"
)


def test_the_real_sdks_land_exactly_what_they_sent(make_pipeline, node_sdks: Path) -> None:
    bodies = recorded_bodies(node_sdks)
    sdks = {sdk for sdk, _ in bodies}
    assert sdks == {"posthog-python", "posthog-node", "rudder-sdk-python", "rudder-sdk-node"}

    pipeline = make_pipeline(sinks=("duckdb",), partitions=1)
    pipeline.start()
    before = datetime.now(UTC) - timedelta(seconds=1)
    pipeline.produce(body for _, body in bodies)
    after = datetime.now(UTC) + timedelta(seconds=1)
    pipeline.wait_drained(timeout=180)
    path = pipeline.settings.duckdb.path

    assert warehouse_rows(path, "SELECT reason, error FROM rejected_events") == []
    names = COLUMNS.split(", ")
    rows = {
        r[0]: dict(zip(names, r, strict=True))
        for r in warehouse_rows(path, f"SELECT {COLUMNS} FROM events")
    }
    sent = [(sdk, json.loads(body)) for sdk, body in bodies]
    expected_total = sum(len(doc["batch"]) for _, doc in sent)
    assert len(rows) == expected_total

    checked: dict[str, int] = {}
    for sdk, doc in sent:
        for item in doc["batch"]:
            if sdk.startswith("posthog"):
                check_posthog(sdk, doc, item, rows, before, after)
            else:
                check_segment(sdk, doc, item, rows, before, after)
            checked[sdk] = checked.get(sdk, 0) + 1
    assert all(checked[s] >= 6 for s in sdks), checked

    # Typed values, as sent, in the typed tables.
    typed = {
        r[0]: r[1:]
        for r in warehouse_rows(path, "SELECT tool_id, tool_type, latency_ms FROM tool_used")
    }
    assert typed == {
        "tool_n1": ("http", 12.5),
        "tool_p1": ("python", 7.0),
        "tool_r1": ("sql", 40.0),
        "tool_q1": ("browser", 33.5),
    }
    flows = {
        r[0]: r[1:]
        for r in warehouse_rows(
            path, "SELECT flow_id, success, time_ms, workspace_id, timestamp FROM flow_executed"
        )
    }
    assert {k: v[:2] for k, v in flows.items()} == {
        "flow_n1": (True, 2500.0),
        "flow_p1": (True, 1500.0),
        "flow_r1": (False, 900.0),
        "flow_q1": (True, 10.0),
    }
    assert {k: v[2] for k, v in flows.items()} == {
        "flow_n1": "ws_node",
        "flow_p1": "ws_py",
        "flow_r1": "ws_rnode",
        "flow_q1": "ws_rpy",
    }
    # The callers' explicit past time: kept as given (RudderStack), skew-corrected
    # by seconds at most (PostHog); never replaced by the ingestion time.
    for flow_id, (*_, ts) in flows.items():
        assert abs((utc(ts) - EXPLICIT).total_seconds()) < 60, (flow_id, ts)
    for flow_id in ("flow_r1", "flow_q1"):
        assert utc(flows[flow_id][-1]) == EXPLICIT
    # No $ property became a user column.
    cols = {r[0] for r in warehouse_rows(path, "DESCRIBE tool_used")}
    assert not cols & {"lib", "lib_version", "groups", "groups_", "is_server", "geoip_disable"}


def check_posthog(
    sdk: str, doc: dict, item: dict, rows: dict, before: datetime, after: datetime
) -> None:
    row = rows[item["uuid"]]
    name = item["event"]
    props = item.get("properties") or {}
    where = (sdk, name)
    assert row["event"] == name, where
    assert row["type"] == PH_TYPES.get(name, "track"), where
    assert row["distinct_id"] == item["distinct_id"], where
    anonymous = name == "$groupidentify" or props.get("$process_person_profile") is False
    assert row["user_id"] == (None if anonymous else item["distinct_id"]), where
    workspace = props.get("workspace_id") or (props.get("$groups") or {}).get("workspace")
    if workspace is None and props.get("$group_type") == "workspace":
        workspace = props["$group_key"]
    assert row["workspace_id"] == workspace, where
    # Times: PostHog ingestion's rule.
    sent_at = utc(doc.get("sent_at"))
    original = utc(item.get("timestamp"))
    received = utc(row["received_at"])
    assert before <= received <= after, where
    assert close(utc(row["sent_at"]), sent_at), where
    assert close(utc(row["original_timestamp"]), original), where
    assert row["stated_timestamp"] is None, where
    assert close(utc(row["timestamp"]), received + (original - sent_at)), where
    stored = json.loads(row["properties"])
    if name == "$create_alias":
        assert stored["alias"] == props["alias"], where
    if name in ("$identify", "$set"):
        traits = props.get("$set") or item.get("$set")
        assert json.loads(row["context"])["traits"] == traits, where
    if name == "$groupidentify":
        assert stored["$group_set"] == props["$group_set"], where
    if name == "$pageview":
        assert stored["$current_url"] == props["$current_url"], where


def check_segment(
    sdk: str, doc: dict, item: dict, rows: dict, before: datetime, after: datetime
) -> None:
    row = rows[item["messageId"]]
    kind = item["type"]
    where = (sdk, kind, item.get("event"))
    assert row["type"] == kind, where
    assert row["event"] == (item["event"] if kind == "track" else SEGMENT_NAMES[kind]), where
    assert row["user_id"] == item.get("userId"), where
    assert row["anonymous_id"] == item.get("anonymousId"), where
    assert row["distinct_id"] == (item.get("userId") or item.get("anonymousId")), where
    props = item.get("properties") or {}
    context = item.get("context") or {}
    workspace = props.get("workspace_id") or context.get("groupId")
    if workspace is None and kind == "group":
        workspace = item["groupId"]
    assert row["workspace_id"] == workspace, where
    # Times: rudder-server's rule.
    sent_at = utc(item.get("sentAt", doc.get("sentAt")))
    stated = utc(item.get("timestamp"))
    original = utc(item.get("originalTimestamp")) or stated
    received = utc(row["received_at"])
    assert before <= received <= after, where
    assert close(utc(row["sent_at"]), sent_at), where
    assert close(utc(row["original_timestamp"]), original), where
    assert close(utc(row["stated_timestamp"]), stated), where
    expected = stated if stated is not None else received - (sent_at - original)
    assert close(utc(row["timestamp"]), expected), where
    stored = json.loads(row["properties"])
    for key, value in props.items():
        assert stored[key] == value, (where, key)
    if kind == "page":
        assert stored["name"] == item["name"], where
        assert stored["category"] == item["category"], where
    if kind == "alias":
        assert stored["previous_id"] == item["previousId"], where
    if kind in ("identify", "group"):
        ctx = json.loads(row["context"])
        traits = item.get("traits") or context.get("traits")
        assert ctx.get("traits") == traits, where


def test_node_sdks_are_installed_from_the_lockfile(node_sdks: Path) -> None:
    lock = json.loads((TESTS / "package-lock.json").read_text())
    for name in ("posthog-node", "@rudderstack/rudder-sdk-node"):
        installed = json.loads((node_sdks / name / "package.json").read_text())["version"]
        assert lock["packages"][f"node_modules/{name}"]["version"] == installed
