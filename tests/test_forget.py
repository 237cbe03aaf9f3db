"""etl forget: every warehouse row and vendor person gone, replays kept out, re-runs finish.

Real worker processes on the bundled broker, a real DuckDB file, and the real
``etl`` CLI against the local PostHog and RudderStack protocol servers.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from ops.status import metric_sum, read_samples
from sinks.duckdb import wait_for_lock
from tests.conftest import warehouse_rows
from tests.servers import PostHogServer, RudderStackServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PH_KEY = "phc_forget_project"
PH_PERSONAL = "phx_forget_personal"
WRITE_KEY = "rudder_forget_write"
FORGOTTEN = ("alice", "anon-a", "alice-old")  # alice, her device, and an alias row's old id


def events() -> list[bytes]:
    def ph(name: str, did: str, props: dict) -> bytes:
        return orjson.dumps(
            {"event": name, "distinct_id": did, "uuid": str(uuid.uuid4()), "properties": props}
        )

    out = [
        # Segment style: alice identified on her device anon-a.
        orjson.dumps(
            {
                "type": "track",
                "event": "flow_executed",
                "userId": "alice",
                "anonymousId": "anon-a",
                "messageId": str(uuid.uuid4()),
                "properties": {"flow_id": "f1", "time_ms": 12, "success": True},
            }
        ),
        orjson.dumps(
            {
                "type": "identify",
                "userId": "alice",
                "anonymousId": "anon-a",
                "messageId": str(uuid.uuid4()),
                "traits": {"email": "alice@example.com"},
            }
        ),
        ph("tool_used", "anon-a", {"tool_id": "t", "latency_ms": 3}),
        ph("page_opened", "alice-old", {"n": 1}),
        # A rejected event that names her: it lands in rejected_events.
        ph("tool_used", "alice", {"latency_ms": "fast"}),
    ]
    out += [ph("tool_used", "bob", {"tool_id": "t", "latency_ms": i}) for i in range(5)]
    out.append(ph("tool_used", "bob", {"latency_ms": "slow"}))
    return out


@pytest.fixture
def servers():
    with PostHogServer(PH_KEY, PH_PERSONAL) as ph, RudderStackServer(WRITE_KEY) as rs:
        yield ph, rs
    assert ph.errors == [] and rs.errors == []


def erasure_pipeline(
    make_pipeline, tmp_path: Path, ph, rs, sinks=("duckdb", "posthog", "rudderstack")
):
    env = {
        "POSTHOG_API_KEY": PH_KEY,
        "POSTHOG_HOST": ph.url,
        "ETL_POSTHOG__PERSONAL_API_KEY": PH_PERSONAL,
        "ETL_FLAGS__POSTHOG_MODE": "off",
        "ETL_FLAGS__GATES": "{}",
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "RUDDERSTACK_DATA_PLANE_URL": rs.url,
        "ETL_DELIVERY__FLUSH_INTERVAL": "0.2",
        "ETL_DELIVERY__RETRY_INITIAL": "0.1",
        "ETL_DELIVERY__RETRY_MAX": "1",
        "ETL_ERASURE__STATE_PATH": str(tmp_path / "erasure.sqlite"),
        "ETL_ERASURE__HMAC_SECRET": "erasure-test-key",
        "ETL_ERASURE__RELOAD_INTERVAL": "0.2",
        "ETL_ERASURE__POSTHOG_PROJECT_ID": ph.project_id,
        "ETL_ERASURE__RUDDERSTACK_API_URL": rs.url,
        "ETL_ERASURE__RUDDERSTACK_ACCESS_TOKEN": rs.access_token,
        "ETL_ERASURE__RUDDERSTACK_DESTINATION_IDS": "dest_warehouse,dest_amplitude",
    }
    return make_pipeline(
        sinks=sinks,
        extra_env=env,
        posthog={"api_key": PH_KEY, "host": ph.url},
        rudderstack={"write_key": WRITE_KEY, "data_plane_url": rs.url},
    )


def add_aliases_table(path: Path) -> None:
    """The aliases table another change adds; forget must follow it where it exists."""
    con = wait_for_lock(path, timeout=60, read_only=False)
    try:
        # The pipeline fills users and aliases (anon-a -> alice from her identify call);
        # an older alias of hers, as an alias call would have left it.
        con.execute(
            "INSERT INTO aliases (previous_id, user_id) VALUES ('alice-old', 'alice'), "
            "('bob-old', 'bob')"
        )
    finally:
        con.close()


def person_rows(path: Path, ids: tuple[str, ...]) -> dict[str, int]:
    idl = list(ids)
    needles = [json.dumps(i) for i in ids]
    q = {
        "events": (
            "SELECT count(*) FROM events WHERE distinct_id IN (SELECT unnest(?)) "
            "OR user_id IN (SELECT unnest(?)) OR anonymous_id IN (SELECT unnest(?))",
            [idl, idl, idl],
        ),
        "flow_executed": (
            "SELECT count(*) FROM flow_executed WHERE distinct_id IN (SELECT unnest(?))",
            [idl],
        ),
        "tool_used": (
            "SELECT count(*) FROM tool_used WHERE distinct_id IN (SELECT unnest(?))",
            [idl],
        ),
        "rejected_events": (
            "SELECT count(*) FROM rejected_events WHERE EXISTS (SELECT 1 FROM unnest(?) AS n(q) "
            "WHERE strpos(raw_payload, n.q) > 0)",
            [needles],
        ),
        "aliases": (
            "SELECT count(*) FROM aliases WHERE previous_id IN (SELECT unnest(?)) "
            "OR user_id IN (SELECT unnest(?))",
            [idl, idl],
        ),
        "users": ("SELECT count(*) FROM users WHERE user_id IN (SELECT unnest(?))", [idl]),
    }
    return {t: warehouse_rows(path, sql, params)[0][0] for t, (sql, params) in q.items()}


def vendor_ids(ph: PostHogServer, rs: RudderStackServer) -> set[str]:
    ids = {str(e.get("distinct_id")) for e in ph.events}
    for e in rs.events:
        ids |= {str(e.get("userId")), str(e.get("anonymousId"))}
    return ids


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.stdout.strip(), f"exit {proc.returncode}\nstderr:{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_forget_erases_everywhere_and_a_raw_replay_brings_nobody_back(
    make_pipeline, tmp_path, servers
):
    ph, rs = servers
    p = erasure_pipeline(make_pipeline, tmp_path, ph, rs)
    path = Path(p.settings.duckdb.path)
    p.produce(events())
    p.start()
    p.wait_drained(120)
    add_aliases_table(path)
    before = person_rows(path, FORGOTTEN)
    assert before["events"] == 4 and before["flow_executed"] == 1 and before["tool_used"] == 1
    assert before["rejected_events"] == 1 and before["aliases"] == 2 and before["users"] == 1
    assert {"alice", "anon-a", "alice-old"} <= vendor_ids(ph, rs)
    bob_before = person_rows(path, ("bob", "bob-old"))

    # Without --yes nothing happens, in one line with exit 2.
    refused = p.cli("forget", "--distinct-id", "alice")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert person_rows(path, FORGOTTEN) == before

    result = last_json(p.cli("forget", "--distinct-id", "alice", "--yes", "--json"))
    assert result["status"] == "complete", result
    assert result["linked_ids"] == 2  # anon-a (her device) and alice-old (aliases)
    assert set(result["destinations"]) == {"duckdb", "posthog", "rudderstack"}
    assert result["destinations"]["duckdb"]["detail"]["tables"]["events"] == 4
    assert person_rows(path, FORGOTTEN) == dict.fromkeys(before, 0)
    assert person_rows(path, ("bob", "bob-old")) == bob_before  # nobody else touched

    # The vendors' deletion endpoints got every id, with their auth.
    (deletion,) = ph.deletions
    assert sorted(deletion["distinct_ids"]) == sorted(FORGOTTEN) and deletion["delete_events"]
    (regulation,) = rs.regulations
    assert regulation["regulationType"] == "suppress_with_delete"
    assert sorted(u["userId"] for u in regulation["users"]) == sorted(FORGOTTEN)
    assert regulation["destinationIds"] == ["dest_warehouse", "dest_amplitude"]

    # The audit: one request, an outcome per destination, ids only as hashes.
    con = sqlite3.connect(tmp_path / "erasure.sqlite")
    dump = "\n".join(con.iterdump())
    rows = con.execute("SELECT destination, status, rows_deleted FROM erasure_outcomes").fetchall()
    con.close()
    assert {(d, s) for d, s, _ in rows} == {
        ("duckdb", "done"),
        ("posthog", "done"),
        ("rudderstack", "done"),
    }
    assert not any(i in dump for i in FORGOTTEN)

    # A raw replay of the whole window, to every destination: nothing of hers comes back.
    ph.clear()
    rs.clear()
    replay = p.cli("replay", "--source", "raw", "--from", "-1h", "--json", "--no-progress")
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert person_rows(path, FORGOTTEN) == dict.fromkeys(before, 0)
    assert person_rows(path, ("bob", "bob-old"))["events"] == bob_before["events"]
    assert vendor_ids(ph, rs) & set(FORGOTTEN) == set()
    assert "bob" in vendor_ids(ph, rs)

    # Live: her later events are dropped, and counted; bob's still land.
    p.produce(events())
    p.wait_drained(120)
    assert person_rows(path, FORGOTTEN) == dict.fromkeys(before, 0)
    assert vendor_ids(ph, rs) & set(FORGOTTEN) == set()
    samples = read_samples(p.worker("normalize").metrics_url)
    # Her 4 events and her 1 dead letter of the second round.
    assert metric_sum(samples, "etl_suppressed_total", stage="normalize", mode="drop") == 5

    # Re-running the same forget is a no-op that says so.
    again = last_json(p.cli("forget", "--distinct-id", "alice", "--yes", "--json"))
    assert again["status"] == "complete"
    assert all(o.get("skipped") for o in again["destinations"].values())
    assert len(ph.deletions) == 1 and len(rs.regulations) == 1


def test_forget_killed_mid_way_is_completed_by_a_rerun(make_pipeline, tmp_path, servers):
    ph, rs = servers
    p = erasure_pipeline(make_pipeline, tmp_path, ph, rs)
    path = Path(p.settings.duckdb.path)
    p.produce(events())
    p.start()
    p.wait_drained(120)
    p.stop()  # the erasure does not need the workers; the warehouse file is free

    # RudderStack's control plane hangs: the forget is killed while waiting for it.
    hang = rs.slow_next(60, path="/v2/regulations")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "forget", "--distinct-id", "alice", "--yes", "--json"],
        env={**p.env, "ETL_ERASURE__TIMEOUT": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while hang.hits == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "forget never reached RudderStack"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)

    con = sqlite3.connect(tmp_path / "erasure.sqlite")
    outcomes = dict(con.execute("SELECT destination, status FROM erasure_outcomes").fetchall())
    (status,) = con.execute("SELECT status FROM erasure_requests").fetchone()
    con.close()
    assert outcomes == {"duckdb": "done", "posthog": "done"} and status == "running"
    assert person_rows_events(path) == 0
    assert len(ph.deletions) == 1 and rs.regulations == []

    rerun = p.cli("forget", "--distinct-id", "alice", "--yes", "--json")
    result = last_json(rerun)
    assert rerun.returncode == 0 and result["status"] == "complete", result
    assert (
        result["destinations"]["duckdb"]["skipped"] and result["destinations"]["posthog"]["skipped"]
    )
    assert "skipped" not in result["destinations"]["rudderstack"]
    assert len(ph.deletions) == 1 and len(rs.regulations) == 1  # nothing sent twice


def person_rows_events(path: Path) -> int:
    return warehouse_rows(
        path,
        "SELECT count(*) FROM events WHERE distinct_id IN ('alice', 'anon-a') OR user_id = 'alice'",
    )[0][0]


def test_forget_refuses_without_a_key_or_vendor_settings(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ETL_")},
        "ETL_ERASURE__STATE_PATH": str(tmp_path / "erasure.sqlite"),
        "ETL_DUCKDB__PATH": str(tmp_path / "wh.duckdb"),
    }

    def forget(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "forget", "--distinct-id", "x", "--yes"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    no_key = forget()
    assert no_key.returncode == 2 and "ETL_ERASURE__HMAC_SECRET" in no_key.stderr
    no_project = forget(
        ETL_ERASURE__HMAC_SECRET="k",
        ETL_SINKS="duckdb,posthog",
        POSTHOG_API_KEY="phc_x",
        ETL_POSTHOG__PERSONAL_API_KEY="phx_x",
    )
    assert no_project.returncode == 2 and "ETL_ERASURE__POSTHOG_PROJECT_ID" in no_project.stderr
    for proc in (no_key, no_project):
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    # Nothing was suppressed or erased before the refusal.
    assert not (tmp_path / "erasure.sqlite").exists()
