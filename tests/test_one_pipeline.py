"""One pipeline on every path: replay and requeue write exactly what the live worker writes.

Raw prompts carry emails and API keys; ``enable_guardrails_tracing`` gates
``prompt_blocked`` to the third parties and is on only for workspace
``ws_on`` (set with ``etl flags set ... --workspaces ws_on``, in the flag
database).  The live workers deliver them to the local PostHog and
RudderStack servers and to the warehouse.  Then:

* ``etl replay --source raw`` and ``--source normalized`` into fresh servers
  and a fresh warehouse must produce the same payloads and rows: redacted,
  and without ``ws_off``'s prompts at the third parties;
* ``etl dlq requeue`` of events the live mapper rejected (a too-low size
  limit, then fixed) must produce exactly what a replay of the same raw
  records with the fixed limit produces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import warehouse_rows
from tests.servers import PostHogServer, RudderStackServer
from tests.test_redaction import CORPUS, SECRETS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PH_KEY = "phc_one_pipeline_project_key"
WRITE_KEY = "one_pipeline_write_key"
HMAC_SECRET = "one-pipeline-hmac-secret"
FLAG = "enable_guardrails_tracing"
TS = "2026-11-20T10:00:00Z"
SINKS = "duckdb,posthog,rudderstack"


def prompt(ws: str, i: int, text: str, pad: int = 0, **props: Any) -> bytes:
    return orjson.dumps(
        {
            "event": "prompt_blocked",
            "distinct_id": f"{ws}_user_{i}",
            "uuid": f"00000000-0000-4000-8{pad:03d}-{int(ws == 'ws_on'):04d}{i:08d}",
            "timestamp": TS,
            "sent_at": "2026-11-20T10:00:03Z",
            "properties": {
                "workspace_id": ws,
                "match_score": 0.97,
                "source": "input",
                "reason": "pii",
                "prompt_preview": text,
                **({"notes": "n" * pad} if pad else {}),
                **props,
            },
        }
    )


def corpus(pad: int = 0) -> list[bytes]:
    out = []
    for ws in ("ws_on", "ws_off"):
        out += [prompt(ws, i, text, pad) for i, text in enumerate(CORPUS[:2])]
        out.append(
            orjson.dumps(
                {
                    "type": "track",
                    "event": "tool_used",
                    "userId": f"{ws}_tool_user",
                    "timestamp": TS,
                    "properties": {"tool_id": "search", "latency_ms": "12", "pad": "p" * pad},
                    "context": {"groupId": ws},
                }
            )
        )
    return out


def servers_env(ph: PostHogServer, rs: RudderStackServer, tmp_path: Path) -> dict[str, str]:
    return {
        "POSTHOG_API_KEY": PH_KEY,
        "POSTHOG_HOST": ph.url,
        "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
        "RUDDERSTACK_DATA_PLANE_URL": rs.url,
        "ETL_FLAGS__EMBEDDED_PATH": str(tmp_path / "flags.sqlite3"),
        "ETL_FLAGS__CACHE_TTL": "1",
        "ETL_REDACTION__HMAC_SECRET": HMAC_SECRET,
        "ETL_DELIVERY__FLUSH_INTERVAL": "0.2",
    }


def payloads(ph: PostHogServer, rs: RudderStackServer) -> tuple[list[dict], list[dict]]:
    to_ph = sorted(
        ({k: v for k, v in e.items() if k != "historical_migration"} for e in ph.events),
        key=lambda e: e["uuid"],
    )
    to_rs = sorted(rs.events, key=lambda e: e["messageId"])
    return to_ph, to_rs


def rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of events and two typed tables, by column name (JSON parsed),
    without the load time.

    By name: columns added by schema evolution come in the order their first
    event arrived, which differs between a live run and a replay.
    """
    from sinks.duckdb import wait_for_lock

    con = wait_for_lock(path, timeout=30)
    try:
        out = {}
        for table in ("events", "prompt_blocked", "tool_used"):
            cur = con.execute(f"SELECT * FROM {table} ORDER BY message_id")
            names = [d[0] for d in cur.description]
            out[table] = [
                {
                    k: json.loads(v) if isinstance(v, str) and v[:1] == "{" else v
                    for k, v in zip(names, row, strict=True)
                    if k != "loaded_at"
                }
                for row in cur.fetchall()
            ]
    finally:
        con.close()
    return out


def assert_redacted_and_gated(
    to_ph: list[dict], to_rs: list[dict], warehouse: dict[str, list[tuple]]
) -> None:
    gated = [
        e
        for e in to_ph
        if e["event"] == "prompt_blocked" and e["properties"]["workspace_id"] == "ws_off"
    ]
    gated += [
        e
        for e in to_rs
        if e.get("event") == "prompt_blocked" and e["properties"]["workspace_id"] == "ws_off"
    ]
    assert gated == []
    assert {e["properties"]["workspace_id"] for e in to_ph if e["event"] == "prompt_blocked"} == {
        "ws_on"
    }
    text = json.dumps([to_ph, to_rs, warehouse], default=str)
    assert "[email]" in text and "[secret]" in text
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} reached a destination verbatim"


def last_json(proc: Any) -> dict:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return json.loads(proc.stdout)


def test_replay_of_either_topic_writes_what_the_live_worker_wrote(
    make_pipeline, tmp_path: Path
) -> None:
    with PostHogServer(PH_KEY) as ph, RudderStackServer(WRITE_KEY) as rs:
        env = servers_env(ph, rs, tmp_path)
        p = make_pipeline(
            sinks=tuple(SINKS.split(",")),
            partitions=2,
            extra_env=env,
            posthog={"api_key": PH_KEY, "host": ph.url},
            rudderstack={"write_key": WRITE_KEY, "data_plane_url": rs.url},
        )
        flag = p.cli("flags", "set", FLAG, "--enabled", "--workspaces", "ws_on")
        assert flag.returncode == 0, flag.stderr
        rejected = prompt(
            "ws_on", 9, CORPUS[0], match_score=7
        )  # out of range: a dead letter with a prompt
        p.produce([*corpus(), rejected])
        p.start()
        p.wait_drained(90)
        live_ph, live_rs = payloads(ph, rs)
        live_rows = rows(p.settings.duckdb.path)
        assert len(live_rows["events"]) == 6 and len(live_ph) == len(live_rs) == 4
        assert_redacted_and_gated(live_ph, live_rs, live_rows)
        assert all(e["historical_migration"] is False for e in ph.events)
        (letter,) = warehouse_rows(
            p.settings.duckdb.path, "SELECT reason, raw_payload FROM rejected_events"
        )
        assert letter[0] == "out_of_range" and not any(s in letter[1] for s in SECRETS)

        for source in ("raw", "normalized"):
            ph.clear()
            rs.clear()
            fresh = tmp_path / f"replayed-{source}.duckdb"
            doc = last_json(
                p.cli(
                    "replay",
                    "--source",
                    source,
                    "--range",
                    "0:0-",
                    "--range",
                    "1:0-",
                    "--sinks",
                    SINKS,
                    "--json",
                    "--no-progress",
                    env={"ETL_DUCKDB__PATH": str(fresh)},
                )
            )
            assert doc["by_sink"] == {"duckdb": 6, "posthog": 4, "rudderstack": 4}
            assert doc["gated"] == {"duckdb": 0, "posthog": 2, "rudderstack": 2}
            assert payloads(ph, rs) == (live_ph, live_rs), source
            assert rows(fresh) == live_rows, source
            assert all(e["historical_migration"] is True for e in ph.events)


def test_requeue_writes_what_a_replay_with_the_fixed_mapper_writes(
    make_pipeline, tmp_path: Path
) -> None:
    with PostHogServer(PH_KEY) as ph, RudderStackServer(WRITE_KEY) as rs:
        env = servers_env(ph, rs, tmp_path)
        # The "bug": events over 1 KiB are rejected.  The padded ones carry prompts.
        p = make_pipeline(
            sinks=tuple(SINKS.split(",")),
            partitions=2,
            extra_env={**env, "ETL_NORMALIZE__MAX_EVENT_BYTES": "1024"},
            posthog={"api_key": PH_KEY, "host": ph.url},
            rudderstack={"write_key": WRITE_KEY, "data_plane_url": rs.url},
        )
        assert p.cli("flags", "set", FLAG, "--enabled", "--workspaces", "ws_on").returncode == 0
        big = corpus(pad=1100)
        p.produce([*corpus(), *big])
        p.start()
        p.wait_drained(90)
        db = p.settings.duckdb.path
        letters = warehouse_rows(db, "SELECT reason, raw_payload FROM rejected_events")
        assert [r[0] for r in letters] == ["payload_too_large"] * 6
        assert not any(s in r[1] for r in letters for s in SECRETS)  # stored redacted

        fixed = {"ETL_NORMALIZE__MAX_EVENT_BYTES": "65536"}
        ph.clear()
        rs.clear()
        requeued_db = tmp_path / "requeued.duckdb"
        doc = last_json(
            p.cli(
                "dlq",
                "requeue",
                "--reason",
                "payload_too_large",
                "--yes",
                "--json",
                env={**fixed, "ETL_DUCKDB__PATH": str(requeued_db)},
            )
        )
        assert (doc["requeued"], doc["normalized"], doc["rejected_again"]) == (6, 6, 0)
        assert doc["by_sink"] == {"duckdb": 6, "posthog": 4, "rudderstack": 4}
        requeued_payloads, requeued_rows = payloads(ph, rs), rows(requeued_db)
        assert_redacted_and_gated(*requeued_payloads, requeued_rows)

        # The same raw records, replayed with the fixed limit: the live path's answer.
        ph.clear()
        rs.clear()
        replayed_db = tmp_path / "replayed.duckdb"
        last_json(
            p.cli(
                "replay",
                "--source",
                "raw",
                "--range",
                "0:0-",
                "--range",
                "1:0-",
                "--sinks",
                SINKS,
                "--json",
                "--no-progress",
                env={**fixed, "ETL_DUCKDB__PATH": str(replayed_db)},
            )
        )
        replayed_ph, replayed_rs = payloads(ph, rs)
        big_ids = {orjson.loads(v)["uuid"] for v in big if b'"uuid"' in v}
        assert len(big_ids) == 4

        def keep(items, key):
            return [
                e
                for e in items
                if e[key] in {e[key] for e in requeued_payloads[0 if key == "uuid" else 1]}
            ]

        assert requeued_payloads == (keep(replayed_ph, "uuid"), keep(replayed_rs, "messageId"))
        replayed = rows(replayed_db)
        requeued_ids = {r["message_id"] for r in requeued_rows["events"]}
        assert requeued_ids >= big_ids and len(requeued_ids) == 6
        assert requeued_rows == {
            t: [r for r in rows_ if r["message_id"] in requeued_ids]
            for t, rows_ in replayed.items()
        }
